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


def test_cache_embeddings_uses_init_from_and_writes_zeroshot_and_noise_sets(tmp_path):
    """The SigLiT sweeps' stage 2: a trained run's tower (not the config's random init) embeds the
    pairs, the built-in zero-shot set (labels and class names kept) and noise images."""
    import datasets

    tiny = ["--data.builtin.num_train=64", "--data.builtin.num_validation=16", "--data.builtin.zeroshot_per_class=1",
            f"--data.cache_dir={tmp_path / 'data'}"]
    trained = cli_main(["fit", *SIGLIT, *tiny, f"--trainer.default_root_dir={tmp_path / 'run'}",
                        "--model.image_tower=siglip_lightning.VisionTower",
                        "--model.image_tower.init_args.image_size=16", "--model.image_tower.init_args.patch_size=8",
                        "--model.image_tower.init_args.width=32", "--model.image_tower.init_args.layers=1",
                        "--model.image_tower.init_args.heads=2", "--trainer.callbacks+=siglip_lightning.checkpointing.ResumableCheckpoint"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    out = tmp_path / "cache"
    main(["cache-embeddings", *SIGLIT, *tiny, "--model.image_tower=siglip_lightning.VisionTower",
          "--model.image_tower.init_args.image_size=16", "--model.image_tower.init_args.patch_size=8",
          "--model.image_tower.init_args.width=32", "--model.image_tower.init_args.layers=1",
          "--model.image_tower.init_args.heads=2", f"--model.init_from={ckpt}", f"--out={out / 'pairs'}",
          f"--zeroshot_out={out / 'zeroshot'}", f"--noise_out={out / 'noise'}", "--noise_images=5", "--device=cpu"])
    tower, datamodule = trained.model.image_tower.eval(), trained.datamodule
    rows = list(itertools.islice(iter(datamodule._open()["train"]), 3))
    images = torch.stack([datamodule.eval_transform(decode_image(r[datamodule.image_column])) for r in rows])
    with torch.no_grad():
        expected = tower(images)
    cached = torch.tensor(pq.read_table(sorted((out / "pairs").glob("train-*.parquet"))[0]).to_pydict()["embedding"][:3])
    assert torch.allclose(cached, expected, atol=1e-5)
    zeroshot = datasets.load_dataset(str(out / "zeroshot"), split="test")
    names = datamodule.builtin_spec.class_names
    assert zeroshot.features["label"].names == names and len(zeroshot) == len(names)
    assert len(zeroshot[0]["embedding"]) == 32
    assert (out / "zeroshot_templates.txt").read_text().count("{}") >= 1
    assert pq.read_metadata(out / "noise" / "noise-00000.parquet").num_rows == 5
