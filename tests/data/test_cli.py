"""Local datasets in every format, streamed through the real CLI; kill-and-resume; DDP; bad data."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from siglip_lightning.cli import cli_main, main
from tests.conftest import run_cli, tiny_fit_args
from tests.helpers.data_factory import pairs, read_ids, write_files, write_parquet, write_webdataset

# parquet and webdataset shards are the formats for training at scale: in the default suite.
FORMATS = ["parquet", "webdataset"] + [pytest.param(k, marks=pytest.mark.slow) for k in ("jsonl", "csv", "imagefolder")]


def make_dataset(root: Path, kind: str, n: int = 48, sizes=(20, 28)) -> str:
    rows = pairs(n)
    if kind == "parquet":
        return str(write_parquet(root, rows, sizes))
    if kind == "webdataset":
        write_webdataset(root, rows, sizes)
        return str(root / "*.tar")
    return str(write_files(root, rows, kind))


def data_args(path: str, *extra: str) -> list:
    return [f"--data.path={path}", "--data.batch_size=8", *extra]


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_streams_through_fit(tmp_path, kind):
    path = make_dataset(tmp_path / "data", kind)
    record = tmp_path / "ids.jsonl"
    cli = cli_main(tiny_fit_args(tmp_path / "run", *data_args(path, "--data.val_fraction=0.25"),
                                 "--trainer.max_steps=3", "--trainer.callbacks+=tests.helpers.data_factory.RecordIds",
                                 f"--trainer.callbacks.path={record}"))
    assert cli.trainer.global_step == 3
    ids = [i for _, _, batch, _ in read_ids(record) for i in batch]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert all(i % 4 != 3 for i in ids)  # val_fraction=0.25 holds out every 4th example of a shard...
    assert "val/loss" in cli.trainer.callback_metrics  # ...and validates on them


def test_train_tokenizer_command(tmp_path, capsys):
    from siglip_lightning.text.sentencepiece import SentencePieceTokenizer

    path = make_dataset(tmp_path / "data", "webdataset")
    out = tmp_path / "tok.model"
    main(["train-tokenizer", f"--data.path={path}", "--vocab_size=40", f"--out={out}"])
    assert "wrote" in capsys.readouterr().out
    tokenizer = SentencePieceTokenizer(out, context_length=8)
    assert 20 <= tokenizer.vocab_size <= 40
    ids = tokenizer(["a red circle"])[0]
    assert ids[-1] == tokenizer.eos_id and (ids != tokenizer.processor.unk_id()).all()


def test_clip_tokenizer_option_trains(tmp_path):
    path = make_dataset(tmp_path / "data", "parquet")
    cli = cli_main(tiny_fit_args(tmp_path / "run", *data_args(path, "--data.tokenizer_type=clip"),
                                 "--model.text_tower.init_args.vocab_size=49408"))
    assert cli.trainer.global_step == 2 and cli.datamodule.tokenizer.vocab_size == 49408


def test_mostly_bad_data_exits_with_a_clear_error(tmp_path, capsys):
    rows = pairs(64)
    for r in rows[::4] + rows[1::4] + rows[2::4]:
        r["image"] = b"not an image"
    path = write_parquet(tmp_path / "data", rows, [64])
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(tmp_path / "run", *data_args(str(path))))
    assert exit_info.value.code == 2
    assert "mostly bad" in capsys.readouterr().err


def test_bad_samples_train_to_the_end_with_right_skip_counts(tmp_path):
    rows = pairs(40)
    expected = Counter()
    for k, r in enumerate(rows[1:-1:3]):  # never the last row: skips are counted with the next good sample
        if k % 3 == 0:
            r["image"], reason = b"\xff\xd8 truncated", "image_undecodable"
        elif k % 3 == 1:
            r["text"], reason = "  ", "caption_empty"
        else:
            r["image"], reason = rows[0]["image"][:-200], "image_undecodable"
        expected[reason] += 1
    path = write_parquet(tmp_path / "data", rows, [40])
    good = 40 - sum(expected.values())
    batch = 9 if good % 9 == 0 else good  # one worker, no shuffle: every skip lands in a full batch
    cli = cli_main(tiny_fit_args(tmp_path / "run", *data_args(str(path), f"--data.batch_size={batch}",
                                                             "--data.shuffle_buffer=0"),
                                 "--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0",
                                 "--model.total_steps=10"))
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == good // batch
    for reason in ("image_undecodable", "caption_empty", "image_too_small"):
        assert metrics[f"data/skipped_{reason}"].item() == expected[reason]


def _resume_args(root, path, record, *extra):
    return tiny_fit_args(
        root, *data_args(path, "--data.num_workers=2", "--data.shuffle_buffer=8", "--data.batch_size=4"),
        "--trainer.max_steps=14", "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=tests.helpers.data_factory.RecordIds", f"--trainer.callbacks.path={record}", *extra)


@pytest.mark.slow
def test_killed_run_resumes_with_exactly_the_same_samples(tmp_path):
    # 48 pairs, 2 workers x batch 4 -> 12 steps an epoch: the run crosses an epoch after the resume.
    path = make_dataset(tmp_path / "data", "parquet", sizes=(20, 28))
    ckpt = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.every_n_train_steps=5",
            "--trainer.callbacks.save_top_k=-1"]
    full = run_cli(_resume_args(tmp_path / "a", path, tmp_path / "full.jsonl"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_cli(_resume_args(tmp_path / "b", path, tmp_path / "killed.jsonl", "--trainer.callbacks.die_at_step=7",
                                  *ckpt))
    assert killed.returncode == 17, killed.stderr[-3000:]
    checkpoint = next((tmp_path / "ckpt").glob("*step=5.ckpt"))
    resumed = run_cli(_resume_args(tmp_path / "b", path, tmp_path / "resumed.jsonl", f"--ckpt_path={checkpoint}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = [ids for step, _, ids, _ in read_ids(tmp_path / "full.jsonl")]
    after_resume = [ids for step, _, ids, _ in read_ids(tmp_path / "resumed.jsonl")]
    assert [s for s, _, _, _ in read_ids(tmp_path / "resumed.jsonl")] == list(range(5, 14))
    assert after_resume == uninterrupted[5:]
    assert [ids for _, _, ids, _ in read_ids(tmp_path / "killed.jsonl")] == uninterrupted[:7]


@pytest.mark.slow
def test_ddp_two_ranks_uneven_shards_same_steps_disjoint_ids(tmp_path):
    path = make_dataset(tmp_path / "data", "parquet", n=60, sizes=(6, 30, 4, 20))  # rank 0: 10, rank 1: 50
    record = tmp_path / "ids.jsonl"
    result = run_cli(tiny_fit_args(
        tmp_path / "run", *data_args(path, "--data.num_workers=2", "--data.batch_size=2"),
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=-1", "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=0", "--trainer.callbacks+=tests.helpers.data_factory.RecordIds",
        f"--trainer.callbacks.path={record}"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_ids(record)
    steps = Counter((rank, epoch) for _, rank, _, epoch in rows)
    assert steps[0, 0] == steps[1, 0] > 0 and steps[0, 1] == steps[1, 1] > 0
    for epoch in (0, 1):
        ids = [i for _, _, batch, e in rows if e == epoch for i in batch]
        assert len(ids) == len(set(ids))
