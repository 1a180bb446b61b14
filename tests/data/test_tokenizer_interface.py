"""Every tokenizer a run can use meets siglip_lightning.text.Tokenizer and returns what it promises."""
import pytest
import torch

from siglip_lightning.data.synthetic import ShapesSpec, make_pair
from siglip_lightning.text import Tokenizer
from siglip_lightning.text.gemma import GemmaStyleTokenizer, train_gemma_sentencepiece
from siglip_lightning.text.sentencepiece import ClipTokenizer, SentencePieceTokenizer, train_sentencepiece

CAPTIONS = ["A photo of a T-shirt.", "two DOGS, 3 cats", ""]


def built_tokenizers(tmp_path):
    captions = [make_pair(ShapesSpec(num_train=200), "train", i)[1] for i in range(200)]
    spm = train_sentencepiece(captions, tmp_path / "spm.model", 200)
    gemma = train_gemma_sentencepiece(captions, tmp_path / "gemma.model", 350)
    yield SentencePieceTokenizer(spm, 12)
    yield GemmaStyleTokenizer(gemma, 12)
    yield ClipTokenizer(12)
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from siglip_lightning.text.hf_gemma import save_gemma_tokenizer
    from siglip_lightning.text.pretrained import HFTokenizer

    (tmp_path / "hf").mkdir()
    save_gemma_tokenizer(gemma, tmp_path / "hf", 12)
    AutoTokenizer.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "json")
    yield HFTokenizer(str(tmp_path / "json"), 12)


def test_every_tokenizer_meets_the_interface(tmp_path):
    for tokenizer in built_tokenizers(tmp_path):
        assert isinstance(tokenizer, Tokenizer), type(tokenizer)
        ids = tokenizer(CAPTIONS)
        assert ids.dtype == torch.long and ids.shape == (len(CAPTIONS), tokenizer.context_length)
        assert int(ids.max()) < tokenizer.vocab_size
        assert (ids == tokenizer.eos_id).any(dim=1).all(), type(tokenizer)  # every caption is closed
        assert ids[:, -1].eq(tokenizer.pad_id).any(), type(tokenizer)  # short captions are padded at the end
