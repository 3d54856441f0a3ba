"""The mutation check stays in step with the code: every mutant's anchor is found exactly once, every
named test file exists, and applying a mutant really changes what it names (run the mutants themselves
with ``make mutation-check``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_still_applies_to_the_code_it_switches_off(mutant: Mutant) -> None:
    source = (REPO / mutant.path).read_text(encoding="utf-8")
    mutated = mutant.apply(source)
    assert mutated != source and "MUTANT" in mutated
    for test in mutant.tests:
        assert (REPO / test).is_file(), test


def test_an_anchor_that_drifted_is_an_error_not_a_silent_pass() -> None:
    drifted = Mutant("x", "y", "device/cli.py", "no such line\n", "", ())
    with pytest.raises(ValueError, match="found 0 times"):
        drifted.apply((REPO / "device/cli.py").read_text(encoding="utf-8"))
