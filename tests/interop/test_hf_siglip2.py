"""Siglip2Model folders: a tiny random transformers model loads here and gives its embeddings; a NaFlex
model built here exports to a folder transformers loads and gives ours. transformers is the oracle."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Siglip2Config, Siglip2Model  # noqa: E402

from siglip_lightning.data.naflex import NaFlexTransform  # noqa: E402
from siglip_lightning.errors import UserInputError  # noqa: E402
from siglip_lightning.interop.hf_siglip2 import export_siglip2, load_siglip2, read_siglip2_folder  # noqa: E402
from siglip_lightning.towers import NaFlexVisionTower, PatchBatch, TextTower  # noqa: E402

# (height, width) in pixels: portrait, landscape, square, extreme, tiny
SIZES = [(40, 20), (17, 53), (32, 32), (8, 90), (5, 7)]
BUDGETS = [4, 9, 16, 30]


def tiny_config(patch_size=4, grid=4):
    return Siglip2Config(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=patch_size, num_patches=grid * grid))


def random_images(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in SIZES]


def hf_batch(images, budget, patch_size=4):
    """transformers' own processor: resize within the budget, patchify, pad to the budget."""
    from transformers import Siglip2ImageProcessor

    processor = Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=budget)
    return processor(images=images, return_tensors="pt")


def perturb(model):
    """Random values everywhere (biases and norms are 0/1 at init, which would hide a mix-up)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = Siglip2Model(tiny_config()).eval()
    perturb(model)
    folder = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("budget", BUDGETS)
def test_import_matches_transformers_image_embeddings(hf_folder, budget):
    folder, hf = hf_folder
    loaded = load_siglip2(folder)
    tower = loaded["image_tower"].eval()
    inputs = hf_batch(random_images(budget), budget)  # padded to the budget: several images are padded
    assert (inputs["pixel_attention_mask"] == 0).any()
    with torch.no_grad():
        want = hf.get_image_features(**inputs).pooler_output
        got = tower(dict(inputs))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_import_matches_transformers_text_and_logits(hf_folder):
    folder, hf = hf_folder
    loaded = load_siglip2(folder)
    ids = torch.randint(0, 100, (5, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf.get_text_features(input_ids=ids).pooler_output
        got = loaded["text_tower"].eval()(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert loaded["logit_scale"] == pytest.approx(float(hf.logit_scale.detach()))
    assert loaded["logit_bias"] == pytest.approx(float(hf.logit_bias.detach()))


def test_our_transform_gives_transformers_patches():
    """The data path cuts the same patches as Siglip2ImageProcessor (same resize, same layout)."""
    from PIL import Image

    images = random_images(7)
    for budget in BUDGETS:
        inputs = hf_batch(images, budget)
        transform = NaFlexTransform(patch_size=4, budget=budget)
        for i, image in enumerate(images):
            ours = transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
            n = int(inputs["pixel_attention_mask"][i].sum())
            assert tuple(ours.spatial_shapes[0].tolist()) == tuple(inputs["spatial_shapes"][i].tolist())
            torch.testing.assert_close(ours.patches[0], inputs["pixel_values"][i, :n], atol=1e-6, rtol=0)


def test_export_round_trips_through_transformers(tmp_path):
    torch.manual_seed(5)
    image = NaFlexVisionTower(patch_size=4, width=32, layers=2, heads=4, mlp_ratio=2.0, position_grid=5)
    text = TextTower(vocab_size=100, context_length=16, width=32, layers=2, heads=4, mlp_ratio=2.0, output_dim=32)
    perturb(image), perturb(text)
    scale, bias = torch.tensor(2.3), torch.tensor(-7.5)
    export_siglip2(image, text, scale, bias, tmp_path, max_num_patches=16)
    hf = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Siglip2Model"
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.max_num_patches == 16 and processor.patch_size == 4
    inputs = processor(images=random_images(11), return_tensors="pt")
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(image.eval()(dict(inputs)), hf.get_image_features(**inputs).pooler_output,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text.eval()(ids), hf.get_text_features(input_ids=ids).pooler_output,
                                   atol=1e-5, rtol=1e-5)
    assert float(hf.logit_scale) == pytest.approx(2.3) and float(hf.logit_bias) == pytest.approx(-7.5)
    back = load_siglip2(tmp_path)  # and back here: the same tensors
    for ours, theirs in ((image, back["image_tower"]), (text, back["text_tower"])):
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(theirs.state_dict()[key], value, atol=0, rtol=0)


def test_a_siglip_folder_is_refused_with_the_type_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(UserInputError, match="model_type 'siglip', expected 'siglip2'"):
        read_siglip2_folder(tmp_path)


def test_export_refuses_a_fixed_resolution_tower(tmp_path):
    from siglip_lightning.towers import VisionTower

    text = TextTower(vocab_size=100, context_length=16, width=32, layers=1, heads=4, output_dim=32)
    with pytest.raises(UserInputError, match="NaFlexVisionTower"):
        export_siglip2(VisionTower(width=32), text, torch.tensor(1.0), None, tmp_path)
    assert isinstance(PatchBatch, type)


@pytest.mark.slow
def test_a_siglip2_folder_fine_tunes_through_the_cli_with_its_settings(tmp_path):
    """--pretrained FOLDER (finetune_settings) -> CLI fit on varied-aspect built-in data; at lr 0 the model
    still equals transformers'."""

    from transformers import Siglip2ImageProcessor

    from siglip_lightning.cli import cli_main
    from siglip_lightning.text.gemma import train_gemma_sentencepiece
    from siglip_lightning.data.synthetic import ShapesSpec, make_pair
    from siglip_lightning.text.hf_gemma import save_gemma_tokenizer
    from siglip_lightning.interop.hf_siglip2 import finetune_settings
    from tests.conftest import TINY_DATA, TINY_TRAINER

    torch.manual_seed(0)
    config = tiny_config()
    config.text_config.vocab_size = 400
    hf = Siglip2Model(config).eval()
    perturb(hf)
    folder = tmp_path / "siglip2"
    hf.save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=4, max_num_patches=16).save_pretrained(folder)
    captions = [make_pair(ShapesSpec(num_train=300), "train", i)[1] for i in range(300)]
    save_gemma_tokenizer(train_gemma_sentencepiece(captions, tmp_path / "spm.model", 350), folder, 16)
    settings = finetune_settings(folder)
    assert settings["data.naflex"] == {"patch_size": 4, "budgets": [16], "eval_budget": 16}
    args = ["fit", *TINY_DATA, *TINY_TRAINER, "--data.builtin.max_aspect=2.0", "--data.batch_size=8",
            "--data.num_workers=0", "--model.lr=0", "--model.weight_decay=0", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    args += ["--pretrained", str(folder)]  # the fine-tuning command's dispatch on model_type: siglip2
    cli = cli_main(args)
    assert cli.datamodule.hparams.naflex is not None and cli.datamodule.hparams.tokenizer_type == "gemma"
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    model = cli.model.eval()
    assert float(model.logit_scale.detach()) == pytest.approx(float(hf.logit_scale.detach()))
    inputs = hf_batch(random_images(3), 16)
    ids = cli.datamodule.tokenizer(["a large red circle", "a small blue star in the middle"])
    with torch.no_grad():
        torch.testing.assert_close(model.image_tower(dict(inputs)), hf.get_image_features(**inputs).pooler_output,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.text_tower(ids), hf.get_text_features(input_ids=ids).pooler_output,
                                   atol=1e-5, rtol=1e-5)
