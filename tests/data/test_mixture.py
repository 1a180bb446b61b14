"""Weighted mixtures (data.sources): the realised shares match the weights, per-source columns and
caption fields work through the CLI, and a killed run resumes with exactly the same samples."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from siglip_lightning.data.mixture import MixedStream, draw_sources
from siglip_lightning.data.sources import open_splits
from siglip_lightning.data.stream import PairStream
from siglip_lightning.errors import UserInputError
from tests.conftest import run_cli, tiny_fit_args
from tests.helpers.data_factory import pairs, read_ids, write_parquet

WEIGHTS = [0.6, 0.3, 0.1]


def tiny_parquet(folder: Path, n: int, shards: int, start: int) -> Path:
    """``n`` rows of (id, text, 1-byte image) in ``shards`` files: cheap to read 100k of."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = n // shards
    for k in range(shards):
        ids = list(range(start + k * per, start + (k + 1) * per))
        pq.write_table(pa.table({"id": ids, "text": ["x"] * per, "image": [b"x"] * per}),
                       folder / f"train-{k:05d}.parquet")
    return folder


def test_draws_follow_the_weights():
    rng = random.Random(1)
    counts = Counter(i for i, _ in zip(draw_sources([6, 3, 1], rng), range(100_000)))
    for index, weight in enumerate(WEIGHTS):
        assert abs(counts[index] / 100_000 - weight) < 0.01
    with pytest.raises(UserInputError, match="weights"):
        next(draw_sources([1, -1], rng))


def test_mixture_of_three_sources_over_100k_samples_is_within_one_percent(tmp_path):
    sizes = [70_000, 40_000, 20_000]
    parts = []
    for index, size in enumerate(sizes):
        folder = tiny_parquet(tmp_path / f"s{index}", size, 4, start=index * 1_000_000)
        parts.append(PairStream(open_splits(str(folder))["train"], "image", "text", lambda image: image, len, seed=5,
                                shuffle_buffer=16, id_column="id"))
    mixed = MixedStream(parts, WEIGHTS, seed=5)
    mixed.set_epoch(0)
    counts, ids = Counter(), set()
    for n, ((source, shard, row), example) in enumerate(mixed.raw_examples(0, 1)):
        if n == 100_000:
            break
        counts[source] += 1
        ids.add(example["id"])
        assert example["id"] // 1_000_000 == source  # the key names the source the example came from
    assert sum(counts.values()) == 100_000 and len(ids) == 100_000  # nothing read twice
    shares = [counts[i] / 100_000 for i in range(3)]
    for share, weight in zip(shares, WEIGHTS):
        assert abs(share - weight) <= 0.01, shares


def write_json_webdataset(folder: Path, rows) -> Path:
    """img2dataset-style shards: ``.jpg`` + ``.json`` sidecar holding the captions, no ``.txt``."""
    import io
    import json
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        with tarfile.open(folder / f"part-{k:05d}.tar", "w") as tar:
            for r in rows[k::2]:
                meta = {"caption": r["text"], "meta": {"alt": "alt " + r["text"]}, "key": r["id"]}
                for ext, data in (("jpg", r["image"]), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{r['id']:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    from tests.helpers.eval_data import make_karpathy_json

    root = tmp_path_factory.mktemp("mix")
    parquet = write_parquet(root / "a", pairs(80), [20, 20, 20, 20])
    wds = write_json_webdataset(root / "b", pairs(40, start=5000))
    karpathy = make_karpathy_json(root / "c", num_test=4, num_train=16)  # ids 1000.. (cocoid), train split
    return [
        {"path": str(parquet), "weight": 0.6},
        {"path": f"{wds}/part-{{00000..00001}}.tar", "weight": 0.3, "id_column": "json.key",
         "text_column": {"json.caption": 0.5, "json.meta.alt": 0.5}},
        {"path": str(karpathy), "weight": 0.1},
    ]


def source_of(i: int) -> int:
    return 1 if i >= 5000 else 2 if i >= 1000 else 0


def mixture_args(root: Path, sources, record: Path, *extra: str):
    config = root.parent / f"{root.name}.yaml"
    config.write_text(yaml.safe_dump({"data": {"sources": sources}}))
    return tiny_fit_args(root, "--config", str(config), "--data.batch_size=4", "--data.num_workers=2",
                         "--data.shuffle_buffer=8", "--trainer.max_steps=-1", "--trainer.max_epochs=1",
                         "--trainer.limit_val_batches=0", "--model.total_steps=60",
                         "--trainer.callbacks+=tests.helpers.data_factory.RecordIds", f"--trainer.callbacks.path={record}",
                         *extra)


def test_fit_on_three_sources_follows_the_weights(tmp_path, three_sources):
    record = tmp_path / "ids.jsonl"
    result = run_cli(mixture_args(tmp_path / "run", three_sources, record))
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [i for _, _, batch, _ in read_ids(record) for i in batch]
    assert len(ids) == len(set(ids)) > 80
    shares = Counter(source_of(i) for i in ids)
    for index, weight in enumerate(WEIGHTS):
        assert abs(shares[index] / len(ids) - weight) < 0.08, (shares, len(ids))


def test_sources_and_path_together_is_an_error():
    from siglip_lightning.data.datamodule import ImageTextDataModule

    with pytest.raises(UserInputError, match="not both"):
        ImageTextDataModule(path="x/y", sources=[{"path": "a/b"}])


@pytest.mark.slow
def test_killed_mixture_run_resumes_with_exactly_the_same_samples(tmp_path, three_sources):
    full = run_cli(mixture_args(tmp_path / "a", three_sources, tmp_path / "full.jsonl"))
    assert full.returncode == 0, full.stderr[-3000:]
    ckpt = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.every_n_train_steps=7",
            "--trainer.callbacks.save_top_k=-1"]
    killed = run_cli(mixture_args(tmp_path / "b", three_sources, tmp_path / "killed.jsonl",
                                  "--trainer.callbacks.die_at_step=10", *ckpt))
    assert killed.returncode == 17, killed.stderr[-3000:]
    checkpoint = next((tmp_path / "ckpt").glob("*step=7.ckpt"))
    resumed = run_cli(mixture_args(tmp_path / "b", three_sources, tmp_path / "resumed.jsonl",
                                   f"--ckpt_path={checkpoint}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = [ids for _, _, ids, _ in read_ids(tmp_path / "full.jsonl")]
    assert [ids for _, _, ids, _ in read_ids(tmp_path / "resumed.jsonl")] == uninterrupted[7:]
