"""``device pad-eval DIR [--json]``: APCER per attack species (and the worst) and BPCER, ISO/IEC 30107-3.

``DIR`` holds ``bona_fide/`` and ``attack/<species>/`` (stills or clips): what an installer captures at
their own entrance, or the project's generated set (``device pad-fixtures``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "pad-eval",
        pad_eval,
        "presentation-attack detection error rates over bona_fide/ and attack/<species>/",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def pad_eval(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not (args.directory / "bona_fide").is_dir() and not (args.directory / "attack").is_dir():
        print(f"error: {args.directory} has neither bona_fide/ nor attack/<species>/", file=sys.stderr)
        return EXIT_FAILURE
    from device.evaluation.pad_eval import evaluate, report
    from device.runtime.service import StartupError, open_liveness_stage
    from device.vision.faces import load_stages

    if config.liveness.mode == "off":
        config = config.model_copy(
            update={"liveness": config.liveness.model_copy(update={"mode": "enforce"})}
        )
    try:
        stage = open_liveness_stage(config)
        detector = load_stages(config).detector
    except (StartupError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    assert stage is not None
    results = evaluate(args.directory, detector, stage, config.quality, config.matching.max_samples)
    document = report(results)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print_text(document)
    return EXIT_OK


def rate_text(part: dict[str, Any], name: str) -> str:
    value = part[name]
    if value is None:
        return f"{name.upper()} -: no presentation"
    bound = f" (95 % upper bound {part['upper_95']:.1%})" if part["upper_95"] is not None else ""
    fta = f", {part['failures_to_acquire']} without a face" if part["failures_to_acquire"] else ""
    return f"{name.upper()} {value:.1%} = {part['errors']}/{part['presentations']}{bound}{fta}"


def print_text(document: dict[str, Any]) -> None:
    print(f"bona fide: {rate_text(document['bpcer'], 'bpcer')}")
    for species, part in document["apcer"].items():
        print(f"attack {species}: {rate_text(part, 'apcer')}")
    worst = document["worst_apcer"]
    if worst is not None:
        print(f"worst species: {worst['species']}, {rate_text(worst, 'apcer')}")
