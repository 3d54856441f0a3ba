"""``device selftest``: the Edge TPU gives the CPU's answer, or a clear verdict why not.

Run at boot by entrance-camera-selftest.service before the service starts. Exit codes:
0 every model agrees on TPU and CPU, or there is no TPU (the unit then runs on the CPU and says so);
1 a model cannot be loaded at all; 2 config error; 3 no TPU but ``--require-tpu``;
4 broken pairing: the TPU runtime crashed, hung or disagrees with the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.models.interpreter import AcceleratorError
from device.models.manifest import ModelFileError
from device.runtime.selftest import DEFAULT_TOLERANCE, ModelResult, check_model

EXIT_NO_TPU = 3
EXIT_BROKEN_PAIRING = 4


def register(commands: CommandRegistry) -> None:
    parser = commands.add(
        "selftest", run_selftest, "one inference on the Edge TPU and the same on the CPU, compared"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model name (repeatable; default: the configured detector and embedder)",
    )
    parser.add_argument("--require-tpu", action="store_true", help="no Edge TPU is a failure (exit 3)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest TPU-CPU difference as a fraction of the output range (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def exit_code(results: list[ModelResult], *, require_tpu: bool) -> int:
    verdicts = {result.verdict for result in results}
    if "broken" in verdicts:
        return EXIT_BROKEN_PAIRING
    if require_tpu and "no-tpu" in verdicts:
        return EXIT_NO_TPU
    return EXIT_OK


def run_selftest(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    names = args.model or [config.models.detector, config.models.embedder]
    results = []
    for name in dict.fromkeys(names):
        try:
            results.append(check_model(config.models, name, tolerance=args.tolerance))
        except (ModelFileError, AcceleratorError) as error:
            print(f"error: model {name}: {error}", file=sys.stderr)
            return EXIT_FAILURE
    code = exit_code(results, require_tpu=args.require_tpu)
    if args.json:
        print(json.dumps({"exit_code": code, "models": [vars(result) for result in results]}, indent=2))
    else:
        for result in results:
            print(f"{result.model}: {result.verdict}: {result.detail}")
        if code == EXIT_BROKEN_PAIRING:
            print("selftest FAILED: see deploy/README.md, 'Coral pairing'", file=sys.stderr)
        elif code == EXIT_NO_TPU:
            print("selftest FAILED: no Edge TPU found and --require-tpu was given", file=sys.stderr)
    return code
