"""The processor of an ``--format hf`` export gives, in plain transformers, the run's token ids and image tensors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_lightning.text.gemma import GemmaStyleTokenizer, train_gemma_sentencepiece
from siglip_lightning.text.sentencepiece import SentencePieceTokenizer, train_sentencepiece
from siglip_lightning.data.transforms import ImageTransform
from siglip_lightning.text.hf_gemma import save_gemma_tokenizer
from siglip_lightning.interop.hf import save_hf_processor
from siglip_lightning.interop.hf_processor import image_settings, warn_if_pipeline_cannot_run
from tests.interop.peer import run_peer

# What real captions carry: punctuation, capitals, hyphens, digits, apostrophes, runs of spaces,
# non-ASCII, a literal special token, an over-long caption (truncated), an empty one.
CAPTIONS = [
    "A photo of a T-shirt.", "Hello,   World!!  It's 2024 -- (really)?", "the dog's ball; 3.5 kg @ $12/pc",
    "  Café — naïve Straße ΟΔΟΣ ﬁsh  ", "日本語のテキスト、です。", "tab\tnew\nline\u00a0nbsp", "...", "",
    "x\u2581y under_score #hash", "a </s> b <unk> c <pad> <eos> <bos> <mask>d", "MiXeD CaSe-With-Hyphens 1-2-3",
    " ".join(f"word{i}, more-words." for i in range(40)),
]
CORPUS = CAPTIONS * 3 + ["a photo of a cat", "a red circle on the left", "two blue squares"] * 20


def _ids_in_transformers(folder, texts, length: int, cls: str = "AutoTokenizer"):
    script = """
        import json, sys
        import transformers
        args = json.loads(sys.argv[1])
        tok = getattr(transformers, args["cls"]).from_pretrained(args["folder"])
        out = tok(args["texts"], padding="max_length", max_length=args["length"], truncation=True)
        print(json.dumps({"ids": out["input_ids"], "keys": sorted(out.keys()), "side": tok.padding_side}))
    """
    return run_peer(script, {"folder": str(folder), "texts": texts, "length": length, "cls": cls})


@pytest.mark.parametrize("length", [16, 64])
def test_exported_siglip_tokenizer_gives_the_training_ids(tmp_path, length):
    model = train_sentencepiece(CORPUS, tmp_path / "spm.model", vocab_size=120)
    ours = SentencePieceTokenizer(model, length)(CAPTIONS).tolist()
    save_hf_processor(model, tmp_path / "out", length)
    for cls in ("AutoTokenizer", "SiglipTokenizer"):
        theirs = _ids_in_transformers(tmp_path / "out", CAPTIONS, length, cls)
        assert theirs["keys"] == ["input_ids"]  # no attention mask: our tower attends to padding too
        for caption, a, b in zip(CAPTIONS, ours, theirs["ids"]):
            assert a == b, caption
    assert len({tuple(row) for row in ours}) > len(CAPTIONS) - 3  # the captions do differ in ids


def test_canonicalize_is_siglip_tokenizers_rule_on_random_text(tmp_path):
    import random
    import string

    from transformers import SiglipTokenizer

    from siglip_lightning.text.sentencepiece import canonicalize

    reference = SiglipTokenizer(vocab_file=str(train_sentencepiece(CORPUS, tmp_path / "spm.model", vocab_size=120)))
    pool = string.printable + "éÉ—“”\u00a0\u3000\u2028\x1c\x85ΣΟİß日\u2581"
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        # SiglipTokenizer turns "▁" into a space before canonicalize_text (in tokenize)
        assert canonicalize(text) == reference.canonicalize_text(text.replace("\u2581", " ")), repr(text)


def test_trained_tokenizer_learns_canonical_text(tmp_path):
    """Punctuation never reaches the vocabulary: the model is trained on the text it will encode."""
    import sentencepiece as spm

    model = train_sentencepiece(["A-B! C.D, e?"] * 50 + ["f g h"] * 50, tmp_path / "spm.model", vocab_size=30)
    processor = spm.SentencePieceProcessor(model_file=str(model))
    pieces = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    assert not any(ch in piece for piece in pieces for ch in "-!.,?"), pieces
    tokenizer = SentencePieceTokenizer(model, 8)
    assert tokenizer(["A-B! C.D, e?"]).tolist() == tokenizer(["ab cd e"]).tolist()


def test_exported_gemma_tokenizer_gives_the_training_ids(tmp_path):
    model = train_gemma_sentencepiece(CORPUS, tmp_path / "gemma.model", vocab_size=400)
    ours = GemmaStyleTokenizer(model, 64)(CAPTIONS).tolist()
    (tmp_path / "out").mkdir()
    save_gemma_tokenizer(model, tmp_path / "out", 64)
    theirs = _ids_in_transformers(tmp_path / "out", CAPTIONS, 64)
    assert theirs["side"] == "right" and theirs["keys"] == ["input_ids"]
    for caption, a, b in zip(CAPTIONS, ours, theirs["ids"]):
        assert a == b, caption
    assert all(row[-1] in (0, 1) for row in ours) and any(row[-1] == 0 for row in ours)  # pad 0 after EOS 1


def _images():
    rng = np.random.default_rng(0)
    shapes = [(37, 23, "RGB"), (16, 16, "RGB"), (90, 140, "RGBA"), (41, 41, "L"), (200, 64, "RGB")]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 4 if m == "RGBA" else 3), dtype=np.uint8),
                            "RGBA" if m == "RGBA" else "RGB").convert(m) for w, h, m in shapes]


def _pixels_in_transformers(folder, images, tmp_path, backend=None):
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    script = """
        import json, sys
        from PIL import Image
        from transformers import AutoProcessor
        args = json.loads(sys.argv[1])
        options = {"backend": args["backend"]} if args["backend"] else {}
        processor = AutoProcessor.from_pretrained(args["folder"], **options)
        pixels = processor(images=[Image.open(p) for p in args["paths"]], return_tensors="pt")["pixel_values"]
        print(json.dumps(pixels.tolist()))
    """
    return torch.tensor(run_peer(script, {"folder": str(folder), "paths": paths, "backend": backend}))


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_exported_image_processor_is_the_eval_transform(tmp_path, resample):
    model = train_sentencepiece(CORPUS, tmp_path / "spm.model", vocab_size=120)
    params = {"image_size": 24, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25],
              "image_resample": resample, "image_resize_backend": "torchvision"}
    save_hf_processor(model, tmp_path / "out", 64, image_settings(params))
    images = _images()
    transform = ImageTransform(24, params["image_mean"], params["image_std"], resample=resample,
                               resize_backend="torchvision")
    ours = torch.stack([transform(image) for image in images])
    theirs = _pixels_in_transformers(tmp_path / "out", images, tmp_path)
    assert theirs.shape == ours.shape
    # the same uint8 resize; only the float rescale/normalise rounds differently (float32 ulps)
    assert (theirs - ours).abs().max() < 1e-5


def test_other_resize_backends_warn_and_stay_close(tmp_path):
    params = {"image_size": 24, "image_resize_backend": "pil"}
    model = train_sentencepiece(CORPUS, tmp_path / "spm.model", vocab_size=120)
    with pytest.warns(UserWarning, match="image_resize_backend=pil"):
        save_hf_processor(model, tmp_path / "out", 64, image_settings(params))
    images = _images()
    ours = torch.stack([ImageTransform(24, resize_backend="pil")(image) for image in images])
    theirs = _pixels_in_transformers(tmp_path / "out", images, tmp_path)
    gap = (theirs - ours).abs()
    # random-noise images are the worst case for resampling differences; docs/EXPORT.md quotes this bound
    assert 0 < float(gap.mean()) < 0.01 and float(gap.max()) < 0.1, (float(gap.mean()), float(gap.max()))


def test_pil_exact_runs_are_reproduced_by_the_pil_backend(tmp_path):
    model = train_sentencepiece(CORPUS, tmp_path / "spm.model", vocab_size=120)
    with pytest.warns(UserWarning, match="backend='pil'"):
        settings = image_settings({"image_size": 24, "image_resize_backend": "pil_exact"})
        save_hf_processor(model, tmp_path / "out", 64, settings)
    images = _images()
    ours = torch.stack([ImageTransform(24, resize_backend="pil_exact")(image) for image in images])
    assert (_pixels_in_transformers(tmp_path / "out", images, tmp_path, backend="pil") - ours).abs().max() < 1e-5


def test_export_warns_about_a_vocabulary_trained_on_raw_text(tmp_path):
    from siglip_lightning.text.sentencepiece import train_sentencepiece_file

    raw = train_sentencepiece_file(CORPUS, tmp_path / "raw.model", "raw", str.lower, vocab_size=120,
                                   hard_vocab_limit=False, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1)
    with pytest.warns(UserWarning, match="punctuation in its vocabulary"):
        save_hf_processor(raw, tmp_path / "old", 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_hf_processor(train_sentencepiece(CORPUS, tmp_path / "new.model", vocab_size=120), tmp_path / "new", 64)


def test_pipeline_warning_only_below_64_positions():
    with pytest.warns(UserWarning, match="pads SigLIP text to 64"):
        warn_if_pipeline_cannot_run(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_pipeline_cannot_run(64)


@pytest.mark.parametrize("kind", ["sentencepiece", "gemma"])
def test_tokenizers_trained_under_the_old_text_rule_are_not_reused(tmp_path, monkeypatch, kind):
    from siglip_lightning.text import choice as tokenizers

    key = ["data", ["text"], 1000]
    current = tokenizers.trained_tokenizer_file(tmp_path, kind, 256, key)
    monkeypatch.setattr(tokenizers, "TEXT_RULE_VERSION", {kind: 1})
    assert tokenizers.trained_tokenizer_file(tmp_path, kind, 256, key) != current
