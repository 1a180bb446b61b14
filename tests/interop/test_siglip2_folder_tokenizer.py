"""--pretrained reads the tokenizer a SigLIP 2 folder carries, whichever files transformers wrote (issue 21)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, Siglip2Model  # noqa: E402

from siglip_lightning.errors import UserInputError  # noqa: E402
from siglip_lightning.interop.hf_siglip2 import finetune_settings  # noqa: E402
from tests.interop.test_hf_siglip2 import tiny_config  # noqa: E402

AWKWARD = ["A photo of a T-shirt.", "  two  DOGS, 3 cats & 42 birds!!", "rock'n'roll (live) - 1999", "ünïcode café", ""]


def siglip2_folder(tmp_path, with_tokenizer=True):
    """A random tiny Siglip2Model; its tokenizer saved by transformers' save_pretrained (tokenizer.json only)."""
    from siglip_lightning.data.synthetic import ShapesSpec, make_pair
    from siglip_lightning.text.gemma import train_gemma_sentencepiece
    from siglip_lightning.text.hf_gemma import save_gemma_tokenizer

    torch.manual_seed(0)
    config = tiny_config()
    config.text_config.vocab_size = 400
    folder = tmp_path / "siglip2"
    Siglip2Model(config).eval().save_pretrained(folder)
    from transformers import Siglip2ImageProcessor

    Siglip2ImageProcessor(patch_size=4, max_num_patches=16).save_pretrained(folder)
    if with_tokenizer:
        captions = [make_pair(ShapesSpec(num_train=300), "train", i)[1] for i in range(300)] + AWKWARD
        spm = tmp_path / "spm"
        spm.mkdir()
        save_gemma_tokenizer(train_gemma_sentencepiece(captions, tmp_path / "spm.model", 350), spm, 16)
        AutoTokenizer.from_pretrained(spm).save_pretrained(folder)
        assert (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").exists()
    return folder


def test_a_siglip2_folder_with_only_tokenizer_json_fine_tunes_with_autotokenizer_ids(tmp_path):
    from siglip_lightning.cli import cli_main
    from tests.conftest import TINY_DATA, TINY_TRAINER

    folder = siglip2_folder(tmp_path)
    args = ["fit", *TINY_DATA, *TINY_TRAINER, "--data.batch_size=8", "--data.num_workers=0",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--pretrained", str(folder)]
    cli = cli_main(args)
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    reference = AutoTokenizer.from_pretrained(folder)
    context = cli.datamodule.hparams.context_length
    expected = reference(AWKWARD, padding="max_length", max_length=context, truncation=True,
                         return_tensors="pt")["input_ids"]
    assert torch.equal(cli.datamodule.tokenizer(AWKWARD), expected)


def test_a_siglip2_folder_without_a_tokenizer_names_what_is_missing(tmp_path):
    folder = siglip2_folder(tmp_path, with_tokenizer=False)
    with pytest.raises(UserInputError, match=r"no tokenizer \(tokenizer.model, tokenizer.json, spiece.model\)"):
        finetune_settings(folder)


def test_the_vocab_size_error_names_the_folders_tokenizer(tmp_path):
    from types import SimpleNamespace

    from siglip_lightning.model.module import check_towers_match_data
    from siglip_lightning.text.pretrained import HFTokenizer
    from siglip_lightning.towers import TextTower

    folder = siglip2_folder(tmp_path)
    tokenizer = HFTokenizer(str(folder), 16)
    module = SimpleNamespace(image_tower=None, text_tower=TextTower(vocab_size=tokenizer.vocab_size - 1,
                                                                    context_length=16, width=8, layers=1, heads=2, output_dim=8))
    with pytest.raises(UserInputError, match=f"the tokenizer of {folder} has") as err:
        check_towers_match_data(module, SimpleNamespace(tokenizer=tokenizer, hparams={}))
    assert "data.vocab_size" not in str(err.value)
