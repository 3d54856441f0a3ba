"""Secret scan over every file version in the git history, not only the checked-out tree.

A key committed once and deleted later is still in every clone, so each distinct blob reachable from
any ref is written to a scratch tree (under its path and blob id) and scanned with detect-secrets. A
finding passes only when the baseline (``.secrets.baseline``, made with ``detect-secrets scan``) lists
the same hashed secret for the same file path, i.e. a reviewed false positive. Usage:

    python deploy/checks/scan_history.py [--baseline .secrets.baseline] [--max-bytes N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

# The baseline lists hashed findings by design; it is the review record, not a place for secrets.
SKIPPED_PATHS = frozenset({".secrets.baseline"})
MAX_BLOB_BYTES = 2_000_000  # model files and images: binary, and too large to hold a readable secret
# The project pins every download by sha256 (locks, fixtures, model manifest): such digests are public
# by design, so lines that name a digest or map a file name to one are not secrets.
EXCLUDE_LINES = (
    r"(?i)(sha256|--hash=|digest)",
    r"""["'][\w./-]+\.(jpg|jpeg|png|tflite|dat|bz2|gz|whl|deb|json)["']\s*:\s*["'][0-9a-f]{64}["']""",
)


def git(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


def history_blobs(repo: Path, refs: list[str]) -> dict[str, set[str]]:
    """Blob id -> the paths it appeared under, in every commit reachable from ``refs``."""
    blobs: dict[str, set[str]] = {}
    listing = git("rev-list", "--objects", *refs, cwd=repo).decode()
    candidates = {}
    for line in listing.splitlines():
        sha, _, path = line.partition(" ")
        if path and path not in SKIPPED_PATHS:
            candidates.setdefault(sha, set()).add(path)
    if not candidates:
        return blobs
    batch = git_batch_check(repo, list(candidates))
    for sha, (kind, size) in batch.items():
        if kind == "blob" and size <= MAX_BLOB_BYTES:
            blobs[sha] = candidates[sha]
    return blobs


def git_batch_check(repo: Path, shas: list[str]) -> dict[str, tuple[str, int]]:
    result = subprocess.run(
        ["git", "cat-file", "--batch-check"],
        cwd=repo,
        input="\n".join(shas).encode(),
        check=True,
        capture_output=True,
    )
    info = {}
    for line in result.stdout.decode().splitlines():
        sha, kind, size = line.split()
        info[sha] = (kind, int(size))
    return info


def materialise(repo: Path, blobs: dict[str, set[str]], scratch: Path) -> dict[str, str]:
    """Writes each blob as <path>@<blob id>; returns scratch-relative name -> original path."""
    names = {}
    for sha, paths in blobs.items():
        content = git("cat-file", "blob", sha, cwd=repo)
        for path in paths:
            pure = PurePosixPath(path)
            name = str(pure.parent / f"{pure.name}@{sha[:12]}")
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            names[name] = path
    return names


def exclusions() -> list[str]:
    return [argument for pattern in EXCLUDE_LINES for argument in ("--exclude-lines", pattern)]


def baseline_secrets(baseline: Path) -> set[tuple[str, str]]:
    data = json.loads(baseline.read_text())
    return {
        (path, item["hashed_secret"]) for path, items in data.get("results", {}).items() for item in items
    }


def write_baseline(baseline: Path, found: dict[str, list[dict[str, object]]], names: dict[str, str]) -> None:
    results: dict[str, list[dict[str, object]]] = {}
    for name, items in sorted(found.items()):
        path = names.get(name, name)
        for item in items:
            entry = {"type": item["type"], "hashed_secret": item["hashed_secret"]}
            if entry not in results.setdefault(path, []):
                results[path].append(entry)
    document = {
        "comment": "reviewed false positives of deploy/checks/scan_history.py (documentation and test data)",
        "exclude_lines": list(EXCLUDE_LINES),
        "results": results,
    }
    baseline.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=Path(".secrets.baseline"))
    parser.add_argument("--repo", type=Path, default=Path())
    parser.add_argument(
        "--all-refs",
        action="store_true",
        help="every branch and tag, not only the history of HEAD (in a shared clone: others' work too)",
    )
    parser.add_argument(
        "--update-baseline",
        action="store_true",
        help="accept every current finding into the baseline (only after reviewing each one)",
    )
    args = parser.parse_args()
    repo = args.repo.resolve()
    allowed = set() if args.update_baseline else baseline_secrets(args.baseline)
    blobs = history_blobs(repo, ["--all"] if args.all_refs else ["HEAD"])
    with tempfile.TemporaryDirectory(prefix="secret-scan-") as tmp:
        scratch = Path(tmp)
        names = materialise(repo, blobs, scratch)
        scan = subprocess.run(
            ["detect-secrets", "scan", "--all-files", *exclusions(), "."],
            cwd=scratch,
            check=True,
            capture_output=True,
        )
    found = json.loads(scan.stdout)["results"]
    problems = []
    for name, items in found.items():
        path = names.get(name, name)
        for item in items:
            if (path, item["hashed_secret"]) not in allowed:
                problems.append(
                    f"{path} (blob {name.rsplit('@', 1)[-1]}): {item['type']} line {item['line_number']}"
                )
    if args.update_baseline:
        write_baseline(args.baseline, found, names)
        print(f"baseline {args.baseline}: {sum(len(items) for items in found.values())} reviewed findings")
        return 0
    print(
        f"secret scan: {len(blobs)} file versions from the whole history, {len(problems)} unreviewed findings"
    )
    for problem in sorted(problems):
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
