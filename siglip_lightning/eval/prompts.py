"""Class names and prompt templates for zero-shot classification, with short names for common sets.

``class_names: imagenet`` gives the 1000 ImageNet-1k names in the standard label order (the order
of the sorted WordNet ids, which is also the order in which an ImageNet val folder with one
sub-folder per wnid is labelled). ``templates: openai`` gives CLIP's 80 ImageNet prompts,
``simple`` its 7-prompt subset; both come from ``open_clip.zero_shot_metadata``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

from siglip_lightning.errors import UserInputError

CLASS_NAME_SETS = ("imagenet",)
TEMPLATE_SETS = ("openai", "simple", "plain")


def _open_clip_metadata():
    from open_clip import zero_shot_metadata

    return zero_shot_metadata


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
        if key in ("openai", "simple"):
            meta = _open_clip_metadata()
            functions = meta.OPENAI_IMAGENET_TEMPLATES if key == "openai" else meta.SIMPLE_IMAGENET_TEMPLATES
            # open_clip stores them as functions of the class name; "{}" turns them back into templates.
            templates = [fn("{}") for fn in functions]
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
