"""The "no worse than the README" rule itself."""

from __future__ import annotations

from figures_support import worse_cells

README = {"bpcer": "1/18", "print": "0/17", "no_face": "19"}


def test_better_or_equal_passes() -> None:
    assert worse_cells({"bpcer": "0/18", "print": "0/17", "no_face": "19"}, README) == []


def test_more_errors_fail() -> None:
    assert worse_cells({"bpcer": "2/18", "print": "0/17", "no_face": "19"}, README) == [
        "bpcer: 2/18 is worse than the README's 1/18"
    ]


def test_another_set_is_not_comparable() -> None:
    assert worse_cells({"bpcer": "1/18", "print": "0/16", "no_face": "20"}, README) == [
        "print: measured on 16, README on 17",
        "no_face: measured 20, README 19",
    ]
