"""Class names and prompt templates for zero-shot classification, with short names for common sets.

Class names:

* ``imagenet``: the 1000 ImageNet-1k names of ``open_clip.zero_shot_metadata`` in the standard
  label order (the sorted WordNet ids, which is also how an ImageNet val folder with one
  sub-folder per wnid is labelled);
* ``clip_benchmark/<set>``: CLIP_benchmark's list for ``<set>`` (``en_classnames.json`` in the
  installed ``clip-benchmark`` wheel: eurosat, gtsrb, pets, flowers, ...).

Templates (the protocols people report with):

* ``openai``: CLIP's 80 ImageNet prompts (open_clip's ``OPENAI_IMAGENET_TEMPLATES``; open_clip and
  CLIP_benchmark evaluate with these);
* ``clip_paper``: big_vision's default for SigLIP / SigLIP 2 (``prompt_engineering.py``): the same
  80 plus the bare class name, names and templates canonicalised (lower-case, no punctuation);
* ``simple``: CLIP's 7-prompt subset (open_clip's ``SIMPLE_IMAGENET_TEMPLATES``);
* ``plain``: the bare class name;
* ``clip_benchmark/<set>``: CLIP_benchmark's templates for ``<set>``
  (``en_zeroshot_classification_templates.json``, ``{c}`` read as ``{}``).
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import List, Optional, Sequence, Union

from siglip_lightning.errors import UserInputError

CLASS_NAME_SETS = ("imagenet", "clip_benchmark/<set>")
TEMPLATE_SETS = ("openai", "clip_paper", "simple", "plain", "clip_benchmark/<set>")
CLIP_BENCHMARK = "clip_benchmark/"


def _open_clip_metadata():
    from open_clip import zero_shot_metadata

    return zero_shot_metadata


def _clip_benchmark_set(kind: str, name: str) -> List[str]:
    """CLIP_benchmark's ``en_<kind>.json`` entry ``name``, read from the installed package."""
    try:
        from importlib.resources import files

        table = json.loads(files("clip_benchmark.datasets").joinpath(f"en_{kind}.json").read_text(encoding="utf-8"))
    except ModuleNotFoundError as err:
        raise UserInputError(f"{CLIP_BENCHMARK}{name} needs clip-benchmark installed (pip install clip-benchmark)") from err
    if name not in table:
        raise UserInputError(f"{CLIP_BENCHMARK}{name}: CLIP_benchmark has no {kind} for {name!r}; it has {sorted(table)}")
    return [str(v).replace("{c}", "{}") for v in table[name]]


def canonicalize_text(text: str, keep: Optional[str] = None) -> str:
    """big_vision's canonical form: ``_`` -> space, punctuation dropped (except the exact string
    ``keep``, e.g. ``{}``), lower-cased, whitespace collapsed."""
    drop = str.maketrans("", "", string.punctuation)
    text = text.replace("_", " ")
    text = keep.join(part.translate(drop) for part in text.split(keep)) if keep else text.translate(drop)
    return re.sub(r"\s+", " ", text.lower()).strip()


def _read_list_file(path: Path, what: str) -> List[str]:
    """One entry per line (.txt) or a JSON list (.json)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        values = json.loads(text)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UserInputError(f"{what} file {path} must hold a JSON list of strings")
        return values
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_class_names(value: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """A list of class names from a list, a set name (``imagenet``) or a .txt/.json file; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() == "imagenet":
            return list(_open_clip_metadata().IMAGENET_CLASSNAMES)
        if value.startswith(CLIP_BENCHMARK):
            return _clip_benchmark_set("classnames", value[len(CLIP_BENCHMARK):])
        path = Path(value).expanduser()
        if path.is_file():
            return _read_list_file(path, "class_names")
        raise UserInputError(f"class_names {value!r} is neither one of {list(CLASS_NAME_SETS)} nor an existing "
                             ".txt/.json file; give a list of names instead")
    names = [str(v) for v in value]
    if not names:
        raise UserInputError("class_names is empty")
    return names


def resolve_templates(value: Union[str, Sequence[str], None], default: Sequence[str] = ("a {}",)) -> List[str]:
    """Prompt templates with one ``{}``: a list, a set name (openai, simple, plain) or a .txt/.json file."""
    if value is None:
        templates = list(default)
    elif isinstance(value, str):
        key = value.lower()
        if key in ("openai", "simple", "clip_paper"):
            meta = _open_clip_metadata()
            functions = meta.SIMPLE_IMAGENET_TEMPLATES if key == "simple" else meta.OPENAI_IMAGENET_TEMPLATES
            # open_clip stores them as functions of the class name; "{}" turns them back into templates.
            templates = [fn("{}") for fn in functions] + (["{}"] if key == "clip_paper" else [])
        elif value.startswith(CLIP_BENCHMARK):
            templates = _clip_benchmark_set("zeroshot_classification_templates", value[len(CLIP_BENCHMARK):])
        elif key == "plain":
            templates = ["{}"]
        elif Path(value).expanduser().is_file():
            templates = _read_list_file(Path(value).expanduser(), "templates")
        elif "{}" in value:
            templates = [value]
        else:
            raise UserInputError(f"templates {value!r} is neither one of {list(TEMPLATE_SETS)}, a template "
                                 "with '{}', nor an existing .txt/.json file")
    else:
        templates = [str(v) for v in value]
    if not templates:
        raise UserInputError("templates is empty")
    for template in templates:
        if template.count("{}") != 1:
            raise UserInputError(f"each prompt template needs exactly one '{{}}' for the class name: {template!r}")
    return templates


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Class-major list: all templates of class 0, then class 1, ..."""
    return [template.replace("{}", name) for name in class_names for template in templates]
