"""Caption field selection: a column, a dotted path into the webdataset .json, several with odds."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from siglip_lightning.data.captions import CaptionFields, lookup, resolve_caption_fields
from siglip_lightning.data.sources import open_splits
from siglip_lightning.errors import UserInputError


def test_dotted_paths_reach_into_json():
    example = {"txt": "t", "json": {"caption": "c", "meta": {"alt": ["a0", "a1"]}}, "a.b": "literal"}
    assert lookup(example, "json.caption") == "c"
    assert lookup(example, "json.meta.alt.1") == "a1"
    assert lookup(example, "a.b") == "literal"  # a column whose name has a dot wins
    assert lookup(example, "json.nothing.deeper") is None


def test_several_fields_are_drawn_with_their_probabilities():
    fields = CaptionFields({"txt": 0.25, "json.caption": 0.75})
    rng = random.Random(0)
    example = {"txt": "t", "json": {"caption": "c"}}
    counts = Counter(fields.value(example, rng) for _ in range(20_000))
    assert abs(counts["c"] / 20_000 - 0.75) < 0.015
    # a field that is empty in this example is not drawn: the other one is used
    assert {fields.value({"txt": " ", "json": {"caption": "c"}}, rng) for _ in range(50)} == {"c"}


def test_unknown_fields_are_named_in_the_error():
    with pytest.raises(UserInputError, match="'jsn.caption' not found"):
        resolve_caption_fields(["jpg", "json"], {"jsn.caption": 1.0}, ())
    with pytest.raises(UserInputError, match="probabilities"):
        CaptionFields({"txt": 0.0})


def test_karpathy_file_is_training_data(tmp_path):
    from tests.helpers.eval_data import make_karpathy_json

    path = make_karpathy_json(tmp_path, num_test=3, num_train=5)
    splits = open_splits(str(path))
    train = list(splits["train"])
    assert sorted(splits) == ["test", "train"] and len(train) == 5
    assert all(len(r["text"]) == 3 and (tmp_path / r["image"]).exists() for r in train)
