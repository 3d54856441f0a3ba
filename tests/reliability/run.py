"""`make reliability`: the fault scenarios with long faults; prints one JSON summary, exit 1 if a target
is missed.

    python tests/reliability/run.py [--outage 45] [--kills 25] [--real-kills 5] [--out reliability.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent), str(HERE)]

from broker import MosquittoBroker  # noqa: E402
from reliability_harness import run_all  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outage", type=float, default=45.0, help="seconds the broker stays killed (30-60)")
    parser.add_argument("--kills", type=int, default=25, help="how often the unit is SIGKILLed (20+)")
    parser.add_argument(
        "--real-kills", type=int, default=5, help="how often the real `device run` is SIGKILLed"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        try:
            summary = run_all(
                broker,
                Path(tmp) / "units",
                outage_s=args.outage,
                kills=args.kills,
                real_kills=args.real_kills,
                freeze=True,
            )
        finally:
            broker.stop()
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if summary["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
