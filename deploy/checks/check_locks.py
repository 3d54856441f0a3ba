"""Checks that every lock file pins exactly and hash-checks every requirement.

pip's ``--require-hashes`` already refuses an unhashed line at install time; this catches it at review
time, for every lock including the unit ones that are only installed on a Pi, and checks that each unit
lock covers every runtime dependency named in pyproject.toml (a forgotten one would make the unit's
``pip install --no-deps`` silently incomplete). Usage: python deploy/checks/check_locks.py
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
UNIT_LOCKS = ("requirements/unit-bookworm.lock", "requirements/unit-trixie.lock")
ALL_LOCKS = (
    "requirements/runtime.lock",
    "requirements/dev.lock",
    "requirements/deploy-tools.lock",
    *UNIT_LOCKS,
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(text: str) -> tuple[dict[str, int], list[str]]:
    """Package -> number of hashes, and the lines that are neither pinned nor hashed."""
    entries: dict[str, int] = {}
    problems = []
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = REQUIREMENT.match(line)
        if match:
            current = canonical(match.group(1))
            entries[current] = len(HASH.findall(line))
        elif line.startswith("--hash=") and current is not None:
            entries[current] += len(HASH.findall(line))
        else:
            problems.append(f"not an exact pin: {line}")
    problems += [f"{name}: no sha256 hash" for name, count in entries.items() if count == 0]
    return entries, problems


def runtime_dependencies(pyproject: Path) -> set[str]:
    data = tomllib.loads(pyproject.read_text())
    names = set()
    for spec in data["project"]["dependencies"]:
        names.add(canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]))
    return names


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    failures = []
    needed = runtime_dependencies(root / "pyproject.toml")
    for lock in ALL_LOCKS:
        path = root / lock
        if not path.is_file():
            failures.append(f"{lock}: missing (make lock)")
            continue
        entries, problems = requirements(path.read_text())
        failures += [f"{lock}: {problem}" for problem in problems]
        if lock in UNIT_LOCKS:
            failures += [
                f"{lock}: runtime dependency {name} not locked" for name in sorted(needed - set(entries))
            ]
        print(
            f"{lock}: {len(entries)} packages, all pinned with sha256"
            if not problems
            else f"{lock}: problems"
        )
    for failure in failures:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
