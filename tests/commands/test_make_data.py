"""``siglip-lightning make-data``: its --spec.* options reach the generator."""
from __future__ import annotations

import json

from siglip_lightning.commands.make_data import main


def test_make_data_writes_the_spec_it_was_given(tmp_path):
    main(["--out", str(tmp_path / "shapes"), "--spec.num_train", "24", "--spec.num_validation", "8",
          "--spec.zeroshot_per_class", "1", "--spec.num_shards", "1", "--spec.max_objects", "1"])
    spec = json.loads((tmp_path / "shapes" / "spec.json").read_text())
    assert spec["num_train"] == 24 and spec["max_objects"] == 1
    assert (tmp_path / "shapes" / "pairs").is_dir()
