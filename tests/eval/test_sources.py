"""Prompt sets, class embeddings, caption-set readers and per-language recall, without a trainer."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from siglip_lightning.errors import UserInputError
from siglip_lightning.eval import Retrieval, ZeroShotClassification, class_embeddings
from siglip_lightning.eval.captions import CaptionSet, expand_captions, read_caption_set
from siglip_lightning.eval.prompts import resolve_class_names, resolve_templates
from siglip_lightning.eval.ranking import recall_at_k
from siglip_lightning.eval.retrieval import per_language_recalls
from tests.helpers.eval_data import make_karpathy_json, make_multilingual_parquet


def test_prompt_sets_from_open_clip():
    from open_clip import zero_shot_metadata as meta

    names = resolve_class_names("imagenet")
    assert len(names) == 1000 and names == list(meta.IMAGENET_CLASSNAMES)
    openai = resolve_templates("openai")
    assert len(openai) == 80 and all(t.count("{}") == 1 for t in openai)
    assert [t.replace("{}", "dog") for t in openai] == [fn("dog") for fn in meta.OPENAI_IMAGENET_TEMPLATES]
    assert len(resolve_templates("simple")) == 7
    assert resolve_templates(None) == ["a {}"] and resolve_templates("plain") == ["{}"]


def test_prompt_errors_name_the_problem(tmp_path):
    with pytest.raises(UserInputError, match="imagenet"):
        resolve_class_names("imagenett")
    with pytest.raises(UserInputError, match="exactly one"):
        resolve_templates(["a {} and a {}"])
    with pytest.raises(UserInputError, match="openai"):
        ZeroShotClassification(name="x", templates="openia")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\n")
    assert resolve_class_names(str(names)) == ["cat", "dog"]


class LookupTextModule:
    """encode_text = a fixed random embedding per distinct token row (normalised)."""

    device = torch.device("cpu")

    def __init__(self, dim=8):
        self.table, self.dim = {}, dim

    def encode_text(self, tokens):
        rows = []
        for row in tokens:
            key = tuple(row.tolist())
            if key not in self.table:
                self.table[key] = F.normalize(torch.randn(self.dim), dim=0)
            rows.append(self.table[key])
        return torch.stack(rows)


def test_class_embeddings_average_then_renormalise():
    tokenizer = lambda texts: torch.tensor([[hash(t) % 10_000] for t in texts])  # noqa: E731
    module = LookupTextModule()
    names, templates = ["cat", "dog", "fish"], ["a {}", "a photo of a {}"]
    got = class_embeddings(module, tokenizer, names, templates, batch_size=4)
    for row, name in enumerate(names):
        each = torch.stack([module.encode_text(tokenizer([t.replace("{}", name)]))[0] for t in templates])
        assert torch.allclose(got[row], F.normalize(each.mean(0), dim=0), atol=1e-6)


def test_karpathy_json_test_split(tmp_path):
    path = make_karpathy_json(tmp_path, num_test=5, num_train=2)
    captions = read_caption_set(str(path))
    assert captions.num_images == 5 and len(captions.captions) == 15
    assert captions.caption_image == [i for i in range(5) for _ in range(3)]
    listed = list(captions.images)
    assert [p for p, _, _ in listed] == list(range(5))
    assert listed[0][1].endswith("val2014/img_00002.png")  # the first test image, after 2 train ones
    assert read_caption_set(str(path), split="train").num_images == 2
    assert read_caption_set(str(path), max_images=3).num_images == 3


def test_coco_captions_json(tmp_path):
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}, {"id": 9, "file_name": "c.jpg"}],
            "annotations": [{"image_id": 3, "caption": "b1"}, {"image_id": 7, "caption": "a1"},
                            {"image_id": 3, "caption": "b2"}]}
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    captions = read_caption_set(str(path), image_root="/imgs")
    # image 9 has no caption: dropped; order follows the images list
    assert captions.num_images == 2 and captions.captions == ["a1", "b1", "b2"]
    assert captions.caption_image == [0, 1, 1]
    assert [raw for _, raw, _ in captions.images] == ["/imgs/a.jpg", "/imgs/b.jpg"]


def test_repeated_rows_and_languages(tmp_path):
    root = make_multilingual_parquet(tmp_path, num_images=4)
    captions = read_caption_set(str(root), image_id_column="image_id", language_column="language")
    assert captions.num_images == 4 and len(captions.captions) == 16 and captions.languages == ["en", "xx"]
    assert len([p for p, _, _ in captions.images]) == 4  # each shared image decoded once
    english = read_caption_set(str(root), image_id_column="image_id", language_column="language", languages=["en"])
    assert len(english.captions) == 8 and english.languages == ["en"]
    # without an id column every row is its own image
    assert read_caption_set(str(root)).num_images == 8
    with pytest.raises(UserInputError, match="image_id_column"):
        read_caption_set(str(root), image_id_column="nope")


def test_expand_captions_shapes():
    assert expand_captions("a") == [("a", None)]
    assert expand_captions(["a", "", "b"], "en") == [("a", "en"), ("b", "en")]
    assert expand_captions({"en": ["a", "b"], "de": "c"}) == [("a", "en"), ("b", "en"), ("c", "de")]
    assert expand_captions([{"raw": "x"}, {"raw": "y"}]) == [("x", None), ("y", None)]


def test_per_language_recall_is_the_mean_of_languages():
    generator = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(50, 16, generator=generator), dim=-1)
    # English captions sit on their image (perfect); "xx" captions are unrelated.
    english = images.clone()
    other = F.normalize(torch.randn(50, 16, generator=generator), dim=-1)
    texts = torch.cat([english, other])
    caption_image = list(range(50)) * 2
    captions = CaptionSet(["t"] * 100, caption_image, ["en"] * 50 + ["xx"] * 50, 50, [])
    metrics = per_language_recalls(images, texts, captions, (1, 5))
    expected_xx = recall_at_k(images, other, torch.arange(50), (1, 5))
    for key, value in expected_xx.items():
        assert metrics[f"en/{key}"] == 1.0
        assert metrics[f"xx/{key}"] == pytest.approx(value)
        assert metrics[key] == pytest.approx((1.0 + value) / 2)


def test_validate_without_validation_split_says_so():
    callback = Retrieval(name="coco", path="unused.json")
    trainer = SimpleNamespace(datamodule=SimpleNamespace(val_dataloader=lambda: []), limit_val_batches=1.0)
    with pytest.raises(UserInputError, match="validation split"):
        callback.setup(trainer, None, "validate")
    with pytest.warns(UserWarning, match="will not run"):
        callback.setup(trainer, None, "fit")
    Retrieval(name="coco", path="unused.json", every_n_steps=10).setup(trainer, None, "fit")  # runs on steps


@pytest.mark.parametrize("name", ["eval_imagenet.yaml", "eval_coco.yaml"])
def test_eval_configs_parse_after_a_run_config(name, capsys):
    """The eval configs are layered on a run's config; together they parse, and the callbacks build."""
    import yaml
    from lightning.pytorch.cli import instantiate_class

    from siglip_lightning.cli import cli_main
    from tests.conftest import REPO

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", "--config", str(REPO / "configs" / "quickstart.yaml"),
                  "--config", str(REPO / "configs" / name), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    callbacks = printed["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] in (["ZeroShotClassification"], ["Retrieval"])
    for callback in callbacks:
        built = instantiate_class((), callback)
        if isinstance(built, ZeroShotClassification):
            assert len(built.class_names) == 1000 and len(built.templates) == 80
