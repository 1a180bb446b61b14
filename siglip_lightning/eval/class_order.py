"""Refuse class names that are a reordering of the data set's own label names.

``class_names`` must be in label order. A names file written in another order than an
imagefolder's (sorted) folder names silently scores against a shuffled answer key: a 10-class
set measured 0.35 top-1 where the same model scores 0.84 with the names in folder order. When
the data set carries its own names (a ``ClassLabel`` feature, e.g. an imagefolder's folders) and
the given names are the same names in another order, or name a label at a different index, the
evaluation stops and says how to fix it. Names that share nothing with the data set's (WordNet
ids vs. readable ImageNet names) cannot be checked and pass.
"""
from __future__ import annotations

import re
from typing import List, Sequence

from siglip_lightning.errors import UserInputError


def _normal(name: str) -> str:
    """Case, separators and surrounding spaces do not matter: ``Golden_Retriever`` == ``golden retriever``."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def misplaced_names(class_names: Sequence[str], label_names: Sequence[str]) -> List[tuple]:
    """``(label index, label name, index in class_names)`` for each data set name found at another index."""
    given = {}
    for index, name in enumerate(class_names):
        given.setdefault(_normal(name), index)
    out = []
    for label, name in enumerate(label_names):
        at = given.get(_normal(name))
        if at is not None and at != label and _normal(class_names[label] if label < len(class_names) else "") != _normal(name):
            out.append((label, name, at))
    return out


def check_class_order(class_names: Sequence[str], label_names: Sequence[str], where: str) -> None:
    """Raise :class:`UserInputError` when ``class_names`` reorders the data set's ``label_names``."""
    wrong = misplaced_names(class_names, label_names)
    if not wrong:
        return
    examples = "; ".join(f"label {label} is {name!r} in the data set but {name!r} is class_names[{at}]"
                         for label, name, at in wrong[:3])
    raise UserInputError(
        f"{where}: class_names are not in the data set's label order ({len(wrong)} of {len(label_names)} "
        f"names at another index: {examples}). Scoring would compare against a shuffled answer key. Fix: "
        "drop class_names to use the data set's own names, or list them in label order (for an "
        "imagefolder: the sorted sub-folder names), or, if the names really mean other classes, set "
        "check_class_order: false"
    )
