"""``make mutation-check``: switch off each defence in tests/mutation/mutants.py, one at a time, in a
copy of the tree, and run the tests named for it. A mutant that no test notices is a defence the suite
does not guard: the run says which and exits 1.

The copy is made once from the files git tracks (models included) and imported through PYTHONPATH, so
the working tree is never touched; a baseline run of every named test without a mutant must pass first,
or a "killed" mutant would prove nothing. JSON summary in mutation.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[2]
PYTEST_FAILED = 1  # pytest's exit code when tests ran and some failed (anything else is not a kill)


def tracked_copy(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, files):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def run_tests(tree: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int, float]:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return result.returncode, round(time.monotonic() - started, 1)


def check_mutant(tree: Path, mutant: Mutant, timeout_s: float) -> dict[str, object]:
    path = tree / mutant.path
    original = path.read_text(encoding="utf-8")
    path.write_text(mutant.apply(original), encoding="utf-8")
    try:
        code, seconds = run_tests(tree, mutant.tests, timeout_s)
    finally:
        path.write_text(original, encoding="utf-8")
    return {
        "defence": mutant.defence,
        "tests": list(mutant.tests),
        "pytest_exit": code,
        "killed": code == PYTEST_FAILED,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "mutation.json")
    parser.add_argument("--only", nargs="*", default=None, help="mutant names (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
        tree = Path(folder)
        tracked_copy(tree)
        for mutant in chosen:  # every anchor still matches before anything runs
            mutant.apply((tree / mutant.path).read_text(encoding="utf-8"))
        named = tuple(sorted({test for mutant in chosen for test in mutant.tests}))
        baseline, seconds = run_tests(tree, named, args.timeout)
        print(f"baseline (no mutant): pytest exit {baseline} in {seconds} s", flush=True)
        if baseline != 0:
            print("error: the named tests fail without any mutant; nothing can be concluded", file=sys.stderr)
            return 2
        results = {}
        for mutant in chosen:
            results[mutant.name] = check_mutant(tree, mutant, args.timeout)
            outcome = "killed" if results[mutant.name]["killed"] else "SURVIVED"
            print(f"{mutant.name:24s} {outcome:8s} ({results[mutant.name]['seconds']} s)", flush=True)
    survivors = [name for name, result in results.items() if not result["killed"]]
    args.out.write_text(json.dumps({"mutants": results, "survivors": survivors}, indent=2) + "\n")
    if survivors:
        print(f"not guarded by any behavioural test: {', '.join(survivors)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
