"""The committed suites in configs/eval/ parse, and the published-sets suite finds its data where its
header says the files go."""
from __future__ import annotations

from pathlib import Path

import pytest

from siglip_lightning.errors import UserInputError
from siglip_lightning.eval import Retrieval, ZeroShotClassification
from siglip_lightning.eval.suite import load_suite
from tests.conftest import REPO

SUITES = sorted((REPO / "configs" / "eval").glob("*.yaml"))


def test_the_builtin_suite_needs_no_files():
    suite = load_suite(str(REPO / "configs" / "eval" / "builtin.yaml"))
    assert [type(t) for t in suite.tasks] == [ZeroShotClassification, Retrieval]


LAYOUT = ["imagenet/val/n01440764", "imagenetv2/imagenetv2-matched-frequency-format-val/0", "coco/dataset_coco.json",
          "coco/val2014", "flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", "eurosat/test/AnnualCrop"]


def test_the_published_suite_reads_the_layout_its_header_documents(tmp_path):
    config = REPO / "configs" / "eval" / "published.yaml"
    with pytest.raises(UserInputError, match="task 'imagenet1k': path not found"):
        load_suite(str(config), str(tmp_path))
    header = config.read_text()
    for path in LAYOUT:  # as the header documents it, created empty (the data itself is not read here)
        assert path in header
        target = tmp_path / path
        if target.suffix == ".json":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}")
        else:
            target.mkdir(parents=True)
    suite = load_suite(str(config), str(tmp_path))
    assert [t.name for t in suite.tasks] == ["imagenet1k", "imagenet_v2", "coco_5k", "flickr30k_1k", "eurosat"]
    assert len(suite.tasks[0].class_names) == 1000 and len(suite.tasks[4].class_names) == 10


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_each_suite_header_shows_its_command(suite: Path):
    assert f"--suite configs/eval/{suite.name}" in suite.read_text()
