"""The stream on its own: disjoint shards per rank and worker, exact resume, bad samples, modes."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_lightning.data.loader import StreamLoader
from siglip_lightning.data.shards import plan_slot
from siglip_lightning.data.sources import open_splits
from siglip_lightning.data.stream import PairStream, collate_pairs, decode_image
from siglip_lightning.text.sentencepiece import ClipTokenizer
from siglip_lightning.data.transforms import ImageTransform, to_rgb
from siglip_lightning.errors import UserInputError
from tests.helpers.data_factory import caption, image_bytes, pairs, write_parquet


def fake_tokenizer(texts):
    return torch.tensor([[len(t), sum(map(ord, t)) % 1000] for t in texts])


def stream_of(path, rank=0, world=1, **kwargs) -> PairStream:
    source = open_splits(str(path))["train"]
    import datasets

    source = source.cast_column("image", datasets.Image(decode=False))
    kwargs.setdefault("id_column", "id")
    return PairStream(source, "image", "text", ImageTransform(8), fake_tokenizer, rank=rank, world_size=world,
                      **kwargs)


def loader_of(stream, batch_size, workers, drop_last=True, start_fn=None):
    return StreamLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate_pairs,
                        drop_last=drop_last, epoch_fn=lambda: stream.epoch, start_fn=start_fn)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("world,workers", [(2, 2), (3, 2), (2, 3)])
def test_slots_partition_every_example_exactly_once(num_shards, world, workers):
    rng = np.random.default_rng(num_shards)
    lengths = rng.integers(0, 20, size=num_shards)
    for epoch in (0, 1):
        seen = Counter()
        for rank in range(world):
            for worker in range(workers):
                slot = plan_slot(num_shards, rank, world, worker, workers, seed=3, epoch=epoch, shuffle=True)
                seen.update((s, j) for s in slot.shards for j in range(lengths[s]) if slot.keeps(j))
        expected = {(s, j) for s in range(num_shards) for j in range(lengths[s])}
        assert set(seen) == expected and set(seen.values()) <= {1}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """6 parquet shards of uneven sizes (shard-level split for 2 ranks), 48 pairs."""
    return write_parquet(tmp_path_factory.mktemp("uneven"), pairs(48), [11, 3, 9, 14, 4, 7])


@pytest.mark.parametrize("shards", [[11, 3, 9, 14, 4, 7], [20, 13, 15], [48]])
def test_two_ranks_two_workers_read_every_id_once(tmp_path, shards):
    folder = write_parquet(tmp_path, pairs(48), shards)
    for epoch in (0, 1):
        ids = Counter()
        for rank in range(2):
            stream = stream_of(folder, rank, 2, shuffle_buffer=5)
            stream.set_epoch(epoch)
            for batch in loader_of(stream, batch_size=1, workers=2, drop_last=False):
                ids.update(batch["id"].tolist())
        assert sorted(ids) == list(range(48)) and set(ids.values()) == {1}


def test_drop_is_at_most_a_partial_batch_per_worker(uneven):
    ids, batches = Counter(), []
    for rank in range(2):
        stream = stream_of(uneven, rank, 2, shuffle_buffer=5)
        batches.append(0)
        for batch in loader_of(stream, batch_size=4, workers=2):
            ids.update(batch["id"].tolist())
            batches[-1] += 1
    assert set(ids.values()) == {1}
    assert 48 - len(ids) <= 2 * 2 * 3  # ranks x workers x (batch_size - 1)


def test_shuffle_changes_with_epoch_and_is_seeded(uneven):
    def order(epoch, seed):
        stream = stream_of(uneven, shuffle_buffer=8, seed=seed)
        stream.set_epoch(epoch)
        return [i for b in loader_of(stream, 1, 0, False) for i in b["id"].tolist()]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(1, 0) and sorted(order(0, 0)) == sorted(order(1, 0))
    assert order(0, 0) != order(0, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_reads_exactly_what_the_uninterrupted_run_would(uneven, workers):
    def fresh():
        stream = stream_of(uneven, shuffle_buffer=6, seed=1)
        stream.image_transform = ImageTransform(8, augment=True)  # random crops must replay too
        stream.set_epoch(2)
        return stream

    full = list(loader_of(fresh(), batch_size=3, workers=workers))
    k = 5
    positions, last = {}, -1
    for batch in full[:k]:  # what the datamodule records as batches reach the model
        last, positions[last] = batch["_stream"]
    offset = (last + 1) % max(1, workers)
    rest = list(loader_of(fresh(), batch_size=3, workers=workers, start_fn=lambda epoch: (positions, offset)))
    assert len(rest) == len(full) - k > 0
    for a, b in zip(full[k:], rest):
        assert a["id"].tolist() == b["id"].tolist()
        assert torch.equal(a["image"], b["image"])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_samples_are_skipped_and_counted_and_odd_modes_converted(tmp_path):
    good = pairs(30)
    jpeg = image_bytes(1, size=(30, 30))
    cmyk = image_bytes(2, size=(30, 30), mode="CMYK")
    rgba = Image.new("RGBA", (12, 12), (255, 0, 0, 0))  # fully transparent red -> white
    palette = Image.new("P", (12, 12), 3)
    sixteen = Image.fromarray(np.full((12, 12), 4000, dtype=np.uint16))
    la = Image.new("LA", (12, 12), (100, 255))
    bad = {
        "image_undecodable": [b"definitely not an image", jpeg[: len(jpeg) // 2]],
        "image_missing": [None],
        "image_too_small": [image_bytes(3, size=(2, 9), fmt="PNG")],
        "image_too_large": [image_bytes(4, size=(64, 64), fmt="PNG")],
        "caption_missing": ["NONE"],
        "caption_empty": ["   "],
    }
    rows, expected = [], Counter()
    for i, row in enumerate(good):
        rows.append(row)
        if i < 20 and i % 2 == 0:  # interleave bad rows among good ones (never at the tail)
            reason = list(bad)[(i // 2) % len(bad)]
            values = bad[reason]
            value = values[(i // 2 // len(bad)) % len(values)]
            row = {"id": 1000 + i, "image": image_bytes(i), "text": caption(i)}
            if reason.startswith("caption"):
                row["text"] = None if value == "NONE" else value
            else:
                row["image"] = value
            rows.append(row)
            expected[reason] += 1
    odd = [cmyk, _png(rgba), _png(palette), _png(sixteen), _png(la)]
    rows += [{"id": 2000 + k, "image": v, "text": "odd mode"} for k, v in enumerate(odd)]
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "id": datasets.Value("int64")})
    table = {"image": [None if r["image"] is None else {"bytes": r["image"], "path": None} for r in rows],
             "text": [r["text"] for r in rows], "id": [r["id"] for r in rows]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))

    stream = stream_of(tmp_path / "train.parquet", max_image_pixels=40 * 40)
    samples = list(stream)
    skipped = Counter()
    for s in samples:
        skipped.update(s["skipped"])
    assert skipped == expected and all(expected[r] for r in bad)
    ids = [s["id"] for s in samples]
    assert ids == [r["id"] for r in good] + [2000 + k for k in range(len(odd))]
    converted = {s["id"]: s["image"] for s in samples if s["id"] >= 2000}
    assert all(t.shape == (3, 8, 8) and t.abs().max() <= 1 for t in converted.values())
    assert torch.allclose(converted[2001], torch.ones(3, 8, 8))  # transparent -> white
    assert torch.allclose(converted[2003], torch.full((3, 8, 8), 1.0))  # 16-bit constant -> its max
    la_rgb = np.asarray(to_rgb(la))
    assert la_rgb.shape == (12, 12, 3) and (la_rgb == 100).all()
    assert np.asarray(to_rgb(decode_image(cmyk))).shape == (30, 30, 3)


def test_mostly_bad_data_stops_with_a_clear_error(tmp_path):
    rows = pairs(60)
    for r in rows[:45]:
        r["image"] = b"broken"
    write_parquet(tmp_path, rows, [60])
    with pytest.raises(UserInputError, match="mostly bad: 45 of 50 .*image_undecodable=45"):
        list(stream_of(tmp_path))


def test_clip_tokenizer_matches_open_clip_and_pads_with_end_token():
    import open_clip

    texts = ["a red circle!", "Hello there, what a long caption this is going to be for sure", "!"]
    ours = ClipTokenizer(context_length=12)(texts)
    theirs = open_clip.tokenize(texts, context_length=12)
    end = 49407
    for row_ours, row_theirs in zip(ours, theirs):
        n = int((row_theirs == end).nonzero()[0]) + 1
        assert torch.equal(row_ours[:n], row_theirs[:n])
        assert (row_ours[n:] == end).all()
    assert ours.shape == (3, 12)


def test_transform_matches_the_plain_formula():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.5)
    ours = ImageTransform(16, mean=mean, std=std)(image)
    resized = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.float64)
    plain = (resized / 255 - np.array(mean)) / np.array(std)
    assert np.allclose(ours.permute(1, 2, 0).numpy(), plain, atol=1e-5)
    assert torch.allclose(ImageTransform(16)(Image.new("RGB", (9, 9), (255, 0, 128))),
                          torch.tensor([1.0, -1.0, 128 / 127.5 - 1]).view(3, 1, 1).expand(3, 16, 16), atol=1e-6)


def test_a_list_of_captions_gives_one_caption_per_visit(tmp_path):
    import datasets

    options = [f"caption number {k}" for k in range(6)]
    table = {"image": [{"bytes": image_bytes(i), "path": None} for i in range(12)],
             "captions": [options + [""] for _ in range(12)], "id": list(range(12))}
    datasets.Dataset.from_dict(table).cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "t.parquet"))

    def texts(epoch):
        stream = PairStream(open_splits(str(tmp_path / "t.parquet"))["train"].cast_column(
            "image", datasets.Image(decode=False)), "image", "captions", ImageTransform(8), lambda t: t)
        stream.set_epoch(epoch)
        return [s["text"] for s in stream]

    first = texts(0)
    assert set(first) <= set(options) and len(set(first)) > 1  # one of the list, never the empty one
    assert texts(0) == first and texts(1) != first  # seeded by (epoch, position)


def _rank_main(rank, folder, out):
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=2)
    stream = stream_of(folder, rank, 2, shuffle_buffer=4)
    ids = [b["id"].tolist() for b in loader_of(stream, batch_size=2, workers=2)]
    with open(f"{out}.{rank}", "w") as f:
        json.dump(ids, f)
    dist.destroy_process_group()


def test_uneven_ranks_stop_together_under_a_real_process_group(tmp_path):
    import json

    import torch.multiprocessing as mp

    # 4 shards split 2/2 by rank, in the epoch-0 order: one rank holds far more than the other
    folder = write_parquet(tmp_path / "d", pairs(60), [4, 30, 6, 20])
    mp.start_processes(_rank_main, args=(str(folder), str(tmp_path / "out")), nprocs=2, join=True,
                       start_method="fork")  # fork: no re-import of torch and datasets in the children
    batches = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    assert len(batches[0]) == len(batches[1]) > 0
    ids = [i for rank in batches for b in rank for i in b]
    assert len(ids) == len(set(ids))
    alone = [len(list(loader_of(stream_of(folder, r, 2, shuffle_buffer=4), 2, 2))) for r in range(2)]
    assert min(alone) == len(batches[0]) < max(alone)  # without the agreement one rank would step more


def test_a_corrupt_shard_and_an_unconvertible_image_are_skipped_and_counted(tmp_path):
    write_parquet(tmp_path, pairs(30), [10, 10, 10])
    shard = sorted(tmp_path.glob("*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:500])

    def picky(image):  # stands in for a colour mode PIL cannot turn into RGB
        if image.getpixel((0, 0)) == image_bytes_first_pixel:
            raise ValueError("conversion from this mode is not supported")
        return ImageTransform(8)(image)

    image_bytes_first_pixel = Image.open(io.BytesIO(image_bytes(3))).convert("RGB").getpixel((0, 0))
    stream = stream_of(tmp_path)
    stream = PairStream(stream.source, "image", "text", picky, fake_tokenizer, id_column="id")
    with pytest.warns(UserWarning, match="skipping the rest of data shard 1"):
        samples = list(stream)
    skipped = Counter()
    for s in samples:
        skipped.update(s["skipped"])
    assert skipped == {"shard_unreadable": 1, "image_unconvertible": 1}
    assert [s["id"] for s in samples] == [i for i in list(range(10)) + list(range(20, 30)) if i != 3]


def test_lazy_random_draws_what_random_random_of_its_seed_draws():
    import random

    from siglip_lightning.data.stream import LazyRandom

    for seed in (0, 7, hash((1, 2, 3, 4, 5))):
        lazy, plain = LazyRandom(seed), random.Random(seed)
        assert lazy._rng is None  # nothing seeded before the first draw
        assert [lazy.random(), lazy.randrange(100), lazy.choice("abcdef")] == \
               [plain.random(), plain.randrange(100), plain.choice("abcdef")]
        items = list(range(20))
        lazy.shuffle(items)
        expected = list(range(20))
        plain.shuffle(expected)
        assert items == expected


def test_cached_embedding_captions_are_tokenized_in_chunks_with_the_ids_of_one_call_each(tmp_path):
    """The SigLiT fast path: captions of consecutive embedding samples share one tokenizer call; every
    sample still gets the ids of its own caption, in stream order, with bad samples between them."""
    import datasets

    from siglip_lightning.data import stream as stream_module

    rng = np.random.default_rng(0)
    n = 150
    texts = [f"A {rng.choice(['red', 'blue'])} Shape, no. {i}!" if i % 17 else "" for i in range(n)]  # "" is bad
    folder = tmp_path / "cache"
    folder.mkdir()
    table = {"embedding": rng.standard_normal((n, 4)).astype(np.float32).tolist(), "text": texts, "id": list(range(n))}
    datasets.Dataset.from_dict(table).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    calls = []

    def counting_tokenizer(batch):
        calls.append(len(batch))
        return fake_tokenizer(batch)

    source = open_splits(str(folder))["train"]
    stream = PairStream(source, "embedding", "text", ImageTransform(8), counting_tokenizer, id_column="id",
                        shuffle_buffer=32, seed=3)
    samples = list(stream)
    assert all(isinstance(s["text"], torch.Tensor) for s in samples)
    for s in samples:
        torch.testing.assert_close(s["text"], fake_tokenizer([texts[s["id"]]])[0], rtol=0, atol=0)
        torch.testing.assert_close(s["image"], torch.tensor(table["embedding"][s["id"]]), rtol=0, atol=0)
    assert sorted(s["id"] for s in samples) == [i for i in range(n) if i % 17]
    positions = [s["_pos"][1] for s in samples]
    assert positions == sorted(positions) and [s["_order"][3] for s in samples] == list(range(len(samples)))
    assert sum(s["skipped"].get("caption_empty", 0) for s in samples) == len([i for i in range(n) if i % 17 == 0])
    assert sum(calls) == len(samples) and len(calls) == -(-len(samples) // getattr(stream_module, "_TOKENIZE_EVERY", 64))
