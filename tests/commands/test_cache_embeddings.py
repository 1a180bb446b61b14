"""SigLiT on cached image embeddings: the cache holds the locked tower's outputs; a step skips the tower."""
from __future__ import annotations

import itertools

import pyarrow.parquet as pq
import pytest
import torch

from siglip_lightning.cli import cli_main, main
from siglip_lightning.data.stream import decode_image
from siglip_lightning.commands.cache_embeddings import cache_embeddings
from tests.conftest import REPO

CONFIGS = REPO / "configs"
SIGLIT = ["--config", str(CONFIGS / "siglit.yaml"), "--config", str(CONFIGS / "runlocal" / "siglit.yaml")]


def test_cache_then_fit_on_text_tower_only(tmp_path):
    cli = cli_main(SIGLIT, run=False)
    tower, datamodule = cli.model.image_tower, cli.datamodule
    counts = cache_embeddings(tower, datamodule, tmp_path / "cache", ("train", "validation"), shard_size=200,
                              batch_size=64)
    assert counts == {"train": 512, "validation": 64}
    shards = sorted((tmp_path / "cache").glob("train-*.parquet"))
    assert [pq.read_metadata(s).num_rows for s in shards] == [200, 200, 112]
    table = pq.read_table(shards[0]).to_pydict()
    assert table["id"][:5] == [0, 1, 2, 3, 4]
    # The cached rows are the locked tower's outputs on the same images, in stored order.
    rows = list(itertools.islice(iter(datamodule._open()["train"]), 5))
    images = torch.stack([datamodule.eval_transform(decode_image(r[datamodule.image_column])) for r in rows])
    with torch.no_grad():
        expected = tower(images)
    cached = torch.tensor(table["embedding"][:5])
    assert torch.allclose(cached, expected, atol=1e-6)
    assert table["text"][:5] == [r[datamodule.text_column] for r in rows]

    fit = cli_main(["fit", "--config", str(CONFIGS / "siglit_precomputed.yaml"),
                    "--config", str(CONFIGS / "runlocal" / "siglit_precomputed.yaml"),
                    f"--data.path={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert fit.trainer.global_step == 2
    assert list(fit.model.image_tower.parameters()) == []
    batch = next(iter(fit.datamodule.train_dataloader()))
    assert batch["image"].shape == (16, 32)


def test_cache_embeddings_command_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cache-embeddings", *SIGLIT, "--out", str(tmp_path), "--shard_size", "0"])
    assert exit_info.value.code == 2
    assert "--shard_size must be positive" in capsys.readouterr().err
