"""`make fleet-bench`: many buildings under faults at full size; one JSON summary (also written to
--out), exit 1 when an event was lost, duplicated or rejected.

    python tests/reliability/fleet_bench.py [--units 100] [--rate 2] [--duration 120] [--cut 30]

See fleet_harness.py for the scenario and what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent), str(HERE)]

from fleet_harness import run_fleet  # noqa: E402
from postgres_support import PostgresServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=100, help="simulated units in the building")
    parser.add_argument("--rate", type=float, default=2.0, help="events per second per unit")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds the units publish")
    parser.add_argument("--cut", type=float, default=30.0, help="seconds the bridge link is cut")
    parser.add_argument("--archivers", type=int, default=3, help="archivers in the share group")
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="leave the SIGKILLed archiver dead (shows where its share goes)",
    )
    parser.add_argument(
        "--clean-sessions", action="store_true", help="archivers without persistent sessions (shows the loss)"
    )
    parser.add_argument(
        "--db",
        choices=["postgresql", "sqlite"],
        default="postgresql",
        help="the central archive: a PostgreSQL the bench starts (fsync on), or one SQLite file",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    server = PostgresServer(durable=True).start() if args.db == "postgresql" else None
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        try:
            summary = run_fleet(
                Path(tmp),
                units=args.units,
                rate=args.rate,
                duration_s=args.duration,
                cut_s=args.cut,
                archivers=args.archivers,
                settle_s=600.0,
                restart_killed=not args.no_restart,
                persistent=not args.clean_sessions,
                db=server.url if server else "",
            )
        finally:
            if server is not None:
                server.stop()
    text = json.dumps(summary)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
