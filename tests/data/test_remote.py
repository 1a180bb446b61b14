"""Shards streamed from servers the tests start on 127.0.0.1: an HTTP file server and moto's S3
server, directly and behind a proxy that drops every Nth transfer midway. A fit must read the
same samples, in the same order, as from the local files, and log the retries it needed."""
from __future__ import annotations

import csv

import pytest

from siglip_lightning.data.remote import expand_shards
from siglip_lightning.errors import UserInputError
from tests.conftest import run_cli, tiny_fit_args
from tests.helpers.data_factory import pairs, read_ids, write_webdataset
from tests.helpers.remote_servers import FlakyProxy, S3Server, file_server

PATTERN = "train-{00000..00003}.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_webdataset(tmp_path_factory.mktemp("shards"), pairs(48), [12, 12, 12, 12])


def fit_ids(root, path, *extra, env=None):
    """Ids of every training batch of one epoch (2 workers, batch 4), and the CLI's stderr."""
    record = root / "ids.jsonl"
    args = tiny_fit_args(root, f"--data.path={path}", "--data.batch_size=4", "--data.num_workers=2",
                         "--data.shuffle_buffer=8", "--data.retry_backoff=0.05", "--trainer.max_steps=-1",
                         "--trainer.max_epochs=1", "--trainer.limit_val_batches=0", "--model.total_steps=12",
                         "--trainer.callbacks+=tests.helpers.data_factory.RecordIds", f"--trainer.callbacks.path={record}",
                         *extra)
    import os

    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        result = run_cli(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.returncode == 0, result.stderr[-3000:]
    return [ids for _, _, ids, _ in read_ids(record)], result.stderr


@pytest.fixture(scope="module")
def local_ids(shards, tmp_path_factory):
    return fit_ids(tmp_path_factory.mktemp("local"), f"{shards}/{PATTERN}")[0]


def test_brace_patterns_expand_in_order(shards):
    files = expand_shards(f"{shards}/{PATTERN}")
    assert [f.rsplit("/", 1)[1] for f in files] == [f"train-{k:05d}.tar" for k in range(4)]
    assert expand_shards(f"{shards}/train-0000{{0,1}}.tar::{shards}/train-00003.tar")[-1].endswith("00003.tar")
    with pytest.raises(UserInputError, match="no shard matches"):
        expand_shards(f"{shards}/nothing-*.tar")


def test_local_epoch_reads_every_sample_once(local_ids):
    ids = [i for batch in local_ids for i in batch]
    assert sorted(ids) == list(range(48))


@pytest.mark.parametrize("drop_every", [None, 3])
def test_http_shards_fit_like_local_ones(shards, local_ids, tmp_path, drop_every):
    server = file_server(shards)
    proxy = FlakyProxy(f"127.0.0.1:{server.server_address[1]}", drop_every)
    try:
        ids, stderr = fit_ids(tmp_path, f"{proxy.url}/{PATTERN}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                              f"--trainer.logger.save_dir={tmp_path}")
    finally:
        proxy.shutdown()
        server.shutdown()
    assert ids == local_ids
    retries = stderr.count("data: retry")
    logged = [float(r["data/read_retries"]) for r in csv.DictReader(next(tmp_path.rglob("metrics.csv")).open())
              if r.get("data/read_retries")]
    if drop_every:
        assert proxy.dropped >= 1 and retries == proxy.dropped, (proxy.dropped, stderr[-2000:])
        # the workers' retries reach the logger (those of the tokenizer pass at setup are only logged as lines)
        assert 1 <= max(logged) <= retries
    else:
        assert retries == 0 and not logged


@pytest.mark.parametrize("drop_every", [None, 2])
def test_s3_shards_fit_like_local_ones(shards, local_ids, tmp_path, drop_every):
    s3 = S3Server()
    proxy = FlakyProxy(s3.endpoint.split("//")[1], drop_every)
    try:
        s3.upload(shards, "cc/")
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.url}
        path = f"s3://{s3.bucket}/cc/{PATTERN}" if drop_every else f"s3://{s3.bucket}/cc/*.tar"  # glob too
        ids, stderr = fit_ids(tmp_path, path, env=env)
    finally:
        proxy.shutdown()
        s3.shutdown()
    assert ids == local_ids
    if drop_every:
        assert proxy.dropped >= 1 and stderr.count("data: retry") == proxy.dropped, (proxy.dropped, stderr[-2000:])


def test_a_missing_remote_shard_is_an_error_not_a_skip(shards, tmp_path):
    server = file_server(shards)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{00000..00004}}.tar"  # 00004 does not exist
        result = run_cli(tiny_fit_args(tmp_path, f"--data.path={url}", "--data.tokenizer_path=none.model",
                                       "--data.tokenizer_type=clip", "--model.text_tower.init_args.vocab_size=49408"))
    finally:
        server.shutdown()
    assert result.returncode != 0
    assert "train-00004.tar" in result.stderr
