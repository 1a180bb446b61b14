"""SigLIP 2's text conventions: ids from our SentencePiece tokenizer equal transformers' Gemma-style
tokenizer built over the same model (pad 0, EOS 1 appended, no BOS, lower-cased, cut to the context)."""
import pytest
import torch

from siglip_lightning.text.gemma import GemmaStyleTokenizer, train_gemma_sentencepiece
from siglip_lightning.data.synthetic import ShapesSpec, make_pair
from siglip_lightning.errors import UserInputError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    spec = ShapesSpec(num_train=400)
    captions = [make_pair(spec, "train", i)[1] for i in range(400)] + ["digits 2024 and Ünïcode, punctuation!"]
    return train_gemma_sentencepiece(captions, tmp_path_factory.mktemp("tok") / "gemma.model", 400)


def test_ids_equal_transformers_gemma_tokenizer(model_file, tmp_path):
    from transformers import AutoTokenizer

    from siglip_lightning.text.hf_gemma import hf_gemma_tokenizer, save_gemma_tokenizer

    texts = ["A Large RED circle left of a small blue square", "digits 2024 and ünïcode!", "x" * 40, "",
             "  two  spaces ", "emoji 🙂 falls back to bytes", "a small green star in the top left"]
    ours = GemmaStyleTokenizer(model_file, 16)(texts)
    assert ours[:, 0].ne(2).all() and (ours == 1).sum(1).eq(1).all()  # no BOS, exactly one EOS
    assert ours[2, -1] == 1 and ours[0, -1] == 0  # cut long captions keep EOS; short ones end in padding 0
    save_gemma_tokenizer(model_file, tmp_path, 16)
    for hf in (hf_gemma_tokenizer(model_file, 16), AutoTokenizer.from_pretrained(tmp_path)):
        theirs = hf(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
        assert torch.equal(ours, theirs), (ours, theirs)


def test_a_siglip_sentencepiece_model_is_refused(tmp_path):
    from siglip_lightning.text.sentencepiece import train_sentencepiece

    path = train_sentencepiece(["a red circle", "a blue square"] * 20, tmp_path / "siglip.model", 40)
    with pytest.raises(UserInputError, match="tokenizer_type=gemma"):
        GemmaStyleTokenizer(path, 16)
