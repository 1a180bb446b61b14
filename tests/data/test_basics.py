"""Built-in data generator, tokenizer and image transform."""
from __future__ import annotations

import collections

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from siglip_lightning.data.synthetic import ShapesSpec, make_pair, make_zeroshot_example, write_shapes_dataset
from siglip_lightning.text.sentencepiece import SentencePieceTokenizer, canonicalize, train_sentencepiece
from siglip_lightning.data.transforms import ImageTransform
from siglip_lightning.errors import UserInputError


def test_pairs_are_deterministic_and_diverse():
    spec = ShapesSpec()
    assert make_pair(spec, "train", 5) == make_pair(spec, "train", 5)
    assert make_pair(spec, "train", 5) != make_pair(ShapesSpec(seed=1), "train", 5)
    captions = [make_pair(spec, "train", i)[1] for i in range(2000)]
    assert len(set(captions)) > 1500  # thousands of distinct captions: few in-batch duplicates
    # the colour words of each caption are colours of the spec
    words = collections.Counter(w for c in captions for w in c.split())
    assert set(spec.colors) <= set(words) and set(spec.shapes) <= set(words)


def test_caption_noise_changes_the_requested_fraction():
    clean, noisy = ShapesSpec(caption_noise=0.0), ShapesSpec(caption_noise=0.3)
    changed = sum(make_pair(clean, "train", i)[1] != make_pair(noisy, "train", i)[1] for i in range(1000))
    assert 0.2 < changed / 1000 < 0.35  # a corrupted caption can, rarely, equal the clean one
    # validation captions are never corrupted
    assert all(make_pair(clean, "validation", i) == make_pair(noisy, "validation", i) for i in range(50))


def test_zeroshot_labels_cover_every_class():
    spec = ShapesSpec(num_colors=3, num_shapes=2)
    labels = [make_zeroshot_example(spec, i)[1] for i in range(12)]
    assert sorted(set(labels)) == list(range(6))
    assert spec.class_names[0] == "red circle"


def test_bad_spec_refused():
    with pytest.raises(ValueError, match="num_colors"):
        ShapesSpec(num_colors=99)
    with pytest.raises(ValueError, match="caption_noise"):
        ShapesSpec(caption_noise=1.5)


def test_written_dataset_streams_through_datasets(tmp_path):
    spec = ShapesSpec(num_train=40, num_validation=8, zeroshot_per_class=1, num_shards=2, image_size=24)
    root = write_shapes_dataset(spec, tmp_path / "shapes", progress=False)
    splits = datasets.load_dataset(str(root / "pairs"), streaming=True)
    train = list(splits["train"])
    assert len(train) == 40 and len(list(splits["validation"])) == 8
    assert sorted(ex["id"] for ex in train) == list(range(40))
    first = train[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (24, 24)
    image, caption = make_pair(spec, "train", first["id"])
    assert first["text"] == caption
    zeroshot = list(datasets.load_dataset(str(root / "zeroshot"), split="test", streaming=True))
    assert len(zeroshot) == len(spec.class_names)


def test_tokenizer_lowercases_and_pads_with_eos(tmp_path):
    captions = [make_pair(ShapesSpec(), "train", i)[1] for i in range(300)]
    model = train_sentencepiece(captions, tmp_path / "spm.model", vocab_size=120)
    tok = SentencePieceTokenizer(model, context_length=12)
    ids = tok(["A Small RED circle", "a small red circle"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[1])  # lower-cased
    row = ids[0].tolist()
    n = row.index(tok.eos_id) + 1
    assert all(i == tok.eos_id for i in row[n - 1:])  # EOS then EOS padding
    assert tok.vocab_size <= 120
    long = tok(["a small red circle left of a large blue square " * 4])
    assert long[0, -1].item() == tok.eos_id  # truncated captions still end with EOS


def test_tokenizer_matches_sentencepiece_batch_encoding(tmp_path):
    captions = [make_pair(ShapesSpec(caption_noise=0.5), "train", i)[1] for i in range(400)]
    model = train_sentencepiece(captions[:300], tmp_path / "spm.model", vocab_size=100)
    tok = SentencePieceTokenizer(model, context_length=64)
    texts = captions[300:] + ["UNSEEN Words, here!", ""]
    expected = tok.processor.encode([canonicalize(t) for t in texts])  # the library's own batch path
    assert tok.encode(texts) == [ids + [tok.eos_id] for ids in expected]


def test_tokenizer_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="tokenizer model file not found"):
        SentencePieceTokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "LA"])
def test_transform_any_mode_to_minus_one_one(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    out = ImageTransform(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_transform_matches_manual_scaling():
    image = Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8))
    assert torch.allclose(ImageTransform(8)(image), torch.ones(3, 8, 8))
    black = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    assert torch.allclose(ImageTransform(8)(black), -torch.ones(3, 8, 8))
