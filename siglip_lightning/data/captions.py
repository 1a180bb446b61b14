"""Which caption a training example uses: a column, a field inside a json column, or several with odds.

img2dataset shards carry the caption in ``.txt`` or inside the ``.json`` sidecar (``json.caption``,
``json.meta.alt_text``, ...). ``data.text_column`` takes:

* a column name: ``txt``;
* a dotted path into a dict (json) column: ``json.caption`` (list items by number: ``json.captions.0``);
* several of these with probabilities: ``{txt: 0.5, json.caption: 0.5}``. Each visit draws one of
  the fields that hold a usable caption in this example (probabilities renormalised over them),
  seeded by the sample's position so a resumed run draws the same.
"""
from __future__ import annotations

import random
from typing import Any, Iterable, List, Mapping, Optional, Union

from siglip_lightning.errors import UserInputError

CaptionSpec = Union[str, Mapping[str, float]]


def lookup(example: Mapping[str, Any], field: str) -> Any:
    """The value at ``field``: a column, else ``column.key.key...`` into dicts (and lists by index)."""
    if field in example:
        return example[field]
    value: Any = example
    for part in field.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _usable(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (list, tuple)) and any(isinstance(v, str) and v.strip() for v in value)


class CaptionFields:
    """Draws the caption field of each example.

    Args:
        spec: a field (column or dotted path) or ``{field: probability}``.
    """

    def __init__(self, spec: CaptionSpec) -> None:
        fields = {spec: 1.0} if isinstance(spec, str) else {str(k): float(v) for k, v in dict(spec).items()}
        if not fields or any(p < 0 for p in fields.values()) or sum(fields.values()) <= 0:
            raise UserInputError(f"data.text_column: caption fields need probabilities >= 0 with a positive sum, got {spec!r}")
        total = sum(fields.values())
        self.fields = {k: v / total for k, v in fields.items() if v > 0}
        self.spec = spec

    def columns(self) -> List[str]:
        """Top-level columns the fields read."""
        return sorted({f.split(".", 1)[0] for f in self.fields})

    def value(self, example: Mapping[str, Any], rng: random.Random) -> Any:
        """The raw caption value (string or list) of this example, or None."""
        if len(self.fields) == 1:
            return lookup(example, next(iter(self.fields)))
        values = {f: lookup(example, f) for f in self.fields}
        usable = [f for f in self.fields if _usable(values[f])]
        if not usable:
            return next(iter(values.values()))  # missing/empty: counted as such by the caller
        weights = [self.fields[f] for f in usable]
        return values[rng.choices(usable, weights=weights)[0]]

    def __repr__(self) -> str:
        return repr(self.spec)


def resolve_caption_fields(columns: Iterable[str], wanted: Optional[CaptionSpec], defaults: Iterable[str],
                           key: str = "data.text_column") -> CaptionFields:
    """The fields to read captions from: ``wanted`` checked against the columns, else the first default."""
    columns = list(columns)
    if wanted is None:
        for name in defaults:
            if name in columns:
                return CaptionFields(name)
        raise UserInputError(f"no text column found: the dataset has columns {columns}; none of the defaults "
                             f"{list(defaults)} is there, so set {key} (a column, json.field, or {{field: prob}})")
    fields = CaptionFields(wanted)
    for field in fields.fields:
        if field not in columns and field.split(".", 1)[0] not in columns:
            raise UserInputError(f"text column {field!r} not found ({key}); the dataset has columns {columns}")
    return fields
