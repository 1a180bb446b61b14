"""Class names in another order than the data set's labels are refused, not scored against a shuffled key."""
from __future__ import annotations

import random

import pytest

from siglip_lightning.cli import main
from siglip_lightning.eval.class_order import check_class_order, misplaced_names
from siglip_lightning.errors import UserInputError
from tests.conftest import tiny_fit_args
from tests.helpers.eval_data import SPEC, make_imagefolder


def test_any_reordering_is_found_and_label_order_passes():
    rng = random.Random(0)
    for trial in range(50):
        names = [f"class {k}" for k in range(rng.randint(2, 30))]
        shuffled = names[:]
        while shuffled == names:
            rng.shuffle(shuffled)
        moved = sum(a != b for a, b in zip(names, shuffled))
        assert len(misplaced_names(shuffled, names)) == moved
        assert misplaced_names(names, names) == []
        # separators and case do not hide a reordering
        assert len(misplaced_names([n.upper().replace(" ", "_") for n in shuffled], names)) == moved


def test_names_that_cannot_be_compared_pass():
    wnids = [f"n{k:08d}" for k in range(10)]
    check_class_order([f"animal {k}" for k in range(10)], wnids, "x")  # readable names vs folder ids
    with pytest.raises(UserInputError, match="sorted sub-folder names"):
        check_class_order(["b", "a"], ["a", "b"], "x")


def test_fit_with_reordered_class_names_file_stops_with_the_fix(tmp_path, capsys):
    folder = make_imagefolder(tmp_path / "folder")
    names = sorted(SPEC.class_names)  # the imagefolder labels in sorted folder order
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(reversed(names)) + "\n")
    callback = ["--trainer.callbacks+=siglip_lightning.eval.ZeroShotClassification",
                "--trainer.callbacks.name=folder", f"--trainer.callbacks.path={folder}",
                f"--trainer.callbacks.class_names={names_file}"]
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(tmp_path / "run", *callback))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not in the data set's label order" in err and "check_class_order" in err
