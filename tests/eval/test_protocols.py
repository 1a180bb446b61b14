"""Named protocols: template sets and class-name lists with their sources, big_vision's canonical text,
and class folders named by number (ImageNet-v2's layout) read in numeric order."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from siglip_lightning.eval import ZeroShotClassification
from siglip_lightning.eval.prompts import canonicalize_text, resolve_class_names, resolve_templates


def test_clip_paper_is_the_openai_80_plus_the_bare_name_canonicalised():
    from open_clip import zero_shot_metadata

    openai = [fn("{}") for fn in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
    assert resolve_templates("openai") == openai and len(openai) == 80
    assert resolve_templates("clip_paper") == openai + ["{}"]
    assert resolve_templates("simple") == [fn("{}") for fn in zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES]
    assert ZeroShotClassification(templates="clip_paper").canonicalize
    assert not ZeroShotClassification(templates="openai").canonicalize


def test_canonical_text_drops_punctuation_case_and_underscores_but_keeps_the_placeholder():
    assert canonicalize_text("A close-up  photo of the {}.", keep="{}") == "a closeup photo of the {}"
    assert canonicalize_text("Golden_Retriever, (dog)!", keep=",") == "golden retriever, dog"


def test_clip_benchmark_sets_come_from_the_installed_package():
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    folder = Path(builder.__file__).parent
    names = json.loads((folder / "en_classnames.json").read_text())
    templates = json.loads((folder / "en_zeroshot_classification_templates.json").read_text())
    assert resolve_class_names("clip_benchmark/eurosat") == names["eurosat"]
    assert resolve_templates("clip_benchmark/eurosat") == [t.replace("{c}", "{}") for t in templates["eurosat"]]
    with pytest.raises(Exception, match="no classnames for 'nope'"):
        resolve_class_names("clip_benchmark/nope")


def test_numbered_class_folders_are_labelled_by_their_number(tmp_path):
    """Folders 0..11 sort as strings ("10" before "2"); each image's label must still be its folder's number."""
    from siglip_lightning.eval.zeroshot import LabelledImages
    from tests.helpers.eval_data import make_imagefolder

    named = make_imagefolder(tmp_path / "named")
    classes = sorted(p.name for p in named.iterdir())
    for index, name in enumerate(classes):
        shutil.copytree(named / name, tmp_path / "numbered" / str(index))
    task = ZeroShotClassification(name="numbered", path=str(tmp_path / "numbered"), class_names=classes)
    stream, names, _, numbered = task.resolve(None)
    assert names == classes and numbered is not None
    seen = [(Path(raw["path"]).parent.name, label) for _, raw, label in LabelledImages(stream, "image", "label", None,
                                                                                         numbered)]
    assert len(seen) == 24 and {label for _, label in seen} == set(range(12))
    assert all(int(folder) == label for folder, label in seen)
