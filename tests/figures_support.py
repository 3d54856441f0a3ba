"""README tables of error rates, checked as "no worse than": a change that makes PAD better must not fail
the test that guards it; a change that makes it worse, or measures a different set, must."""

from __future__ import annotations

import re

RATE = re.compile(r"^(\d+)/(\d+)$")


def worse_cells(measured: dict[str, str], documented: dict[str, str]) -> list[str]:
    """The columns where ``measured`` is worse than ``documented`` (more errors) or not comparable (other
    presentations, or another kind of cell); errors/presentations cells ("2/27") compare by count."""
    problems = []
    for column, written in documented.items():
        found = measured.get(column)
        written_rate, found_rate = RATE.match(written), RATE.match(found or "")
        if written_rate is None or found_rate is None:
            if found != written:
                problems.append(f"{column}: measured {found}, README {written}")
            continue
        if found_rate.group(2) != written_rate.group(2):
            problems.append(f"{column}: measured on {found_rate.group(2)}, README on {written_rate.group(2)}")
        elif int(found_rate.group(1)) > int(written_rate.group(1)):
            problems.append(f"{column}: {found} is worse than the README's {written}")
    return problems
