"""``device models verify`` and ``device models eval``: are the shipped model files intact, and how good."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from device.cli import EXIT_FAILURE, EXIT_OK, CommandRegistry, config_from_args
from device.models.edgetpu_compat import CompatError, SchemaUnavailableError, check_file
from device.models.manifest import ModelFileError, load_manifest, verify_file

EMBEDDER_EVAL_MODULE = "device.evaluation.embedder"


def register(commands: CommandRegistry) -> None:
    group = commands.add_group("models", "check and evaluate the shipped model files")
    verify = group.add("verify", verify_models, "check every model file's sha256 and Edge TPU compatibility")
    verify.add_argument("--models-dir", type=Path, help="default: models.dir from the config")
    evaluate = group.add("eval", eval_models, "measure int8 vs float agreement and CPU latency")
    evaluate.add_argument("--models-dir", type=Path, help="default: models.dir from the config")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--detection-sweep",
        action="store_true",
        help="instead: missed faces (fixtures, grey, half size, under-exposed) and false detections "
        "(face-free images) per score threshold, float and int8 detector",
    )
    evaluate.add_argument(
        "--robustness",
        action="store_true",
        help="instead: per degradation, face-found rate and genuine/impostor margin, ours and dlib's "
        "(dev extra)",
    )
    evaluate.add_argument(
        "--lfw",
        type=Path,
        metavar="DIR",
        help="instead: face verification by the LFW protocol on DIR (pairs.csv with fold,a,b,same): per "
        "fold and overall accuracy, TAR at FAR 1e-3 and 1e-2, images without a face, ms per image; "
        "colour, grey and colour-vs-grey, per CPU file",
    )
    evaluate.add_argument(
        "--cpu-file",
        choices=["float", "int8"],
        help="with --lfw: only this CPU file (default: both)",
    )
    evaluate.add_argument(
        "--only",
        choices=["detector", "embedder", "pad"],
        help="measure one model only (the embedder part needs the dlib oracle, a dev extra)",
    )


def _models_dir(args: argparse.Namespace) -> Path:
    explicit: Path | None = getattr(args, "models_dir", None)
    return explicit if explicit is not None else config_from_args(args).models.dir


def verify_report(models_dir: Path) -> tuple[list[str], list[str]]:
    """(lines describing each checked file, problems); no problems means every file may be loaded."""
    lines: list[str] = []
    problems: list[str] = []
    try:
        manifest = load_manifest(models_dir)
    except ModelFileError as error:
        return lines, [str(error)]
    for name, entry in sorted(manifest.models.items()):
        for variant, model_file in entry.files.items():
            if variant == "edgetpu" and model_file.sha256 is None:
                lines.append(
                    f"{name} {variant}: not compiled here (make edgetpu-models on a Coral build host)"
                )
                continue
            try:
                path = verify_file(models_dir, name, variant, model_file)
            except ModelFileError as error:
                problems.append(str(error))
                continue
            lines.append(f"{name} {variant}: sha256 ok ({path})")
            if variant == "float":
                continue
            try:
                report = check_file(path)
            except SchemaUnavailableError as error:
                # The sha256 check above is what protects the unit; compatibility is a build property.
                lines.append(f"{name} {variant}: Edge TPU check skipped: {error}")
                continue
            except CompatError as error:
                problems.append(f"{name} {variant}: {error}")
                continue
            if variant == "edgetpu" and not report.compiled:
                problems.append(f"{name} edgetpu: {path} has no Edge TPU custom op (not compiled)")
            for problem in report.problems:
                problems.append(f"{name} {variant} {path.name}: Edge TPU: {problem}")
            if report.ok:
                ops = ", ".join(f"{op} x{count}" for op, count in sorted(report.ops.items()))
                lines.append(f"{name} {variant}: Edge TPU compatible ({ops})")
    return lines, problems


def verify_models(args: argparse.Namespace) -> int:
    lines, problems = verify_report(_models_dir(args))
    for line in lines:
        print(line)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) with the model files", file=sys.stderr)
        return EXIT_FAILURE
    print("all model files verified")
    return EXIT_OK


def collect_metrics(models_dir: Path, only: str | None = None) -> dict[str, Any]:
    from device.evaluation.detector import detector_metrics

    metrics: dict[str, Any] = {}
    if only in (None, "detector"):
        metrics.update(detector_metrics(models_dir))
    if only in (None, "pad"):
        from device.evaluation.pad_models import TEXTURE_MODELS, landmark_metrics, pad_model_metrics

        for name in TEXTURE_MODELS:
            metrics.update(pad_model_metrics(models_dir, name))
        metrics.update(landmark_metrics(models_dir))
    # The embedder's figures come from its own module when it is part of this build.
    if only in (None, "embedder") and importlib.util.find_spec(EMBEDDER_EVAL_MODULE) is not None:
        module = importlib.import_module(EMBEDDER_EVAL_MODULE)
        embedder: dict[str, Any] = module.embedder_metrics(models_dir)
        metrics.update(embedder)
    return metrics


def detection_sweep_metrics(models_dir: Path, detection: Any) -> dict[str, Any]:
    from device.evaluation.detection_sweep import detection_sweep
    from device.lab.democlip import hallway

    empty_entrance = {"entrance_640x480": hallway(640, 480), "entrance_1280x720": hallway(1280, 720)}
    result: dict[str, Any] = {"score_threshold": detection.score_threshold}
    for variant in ("float", "int8"):
        result[variant] = detection_sweep(models_dir, empty_entrance, variant, detection).as_json()
    return {"detection_sweep": result}


def selected_metrics(args: argparse.Namespace) -> dict[str, Any]:
    models_dir = _models_dir(args)
    if getattr(args, "detection_sweep", False):
        return detection_sweep_metrics(models_dir, config_from_args(args).detection)
    if getattr(args, "lfw", None) is not None:
        from device.evaluation.lfw import CPU_FILES, lfw_metrics

        cpu_files = (args.cpu_file,) if getattr(args, "cpu_file", None) else CPU_FILES
        return {"lfw": lfw_metrics(models_dir, args.lfw, cpu_files)}
    if getattr(args, "robustness", False):
        from device.evaluation.robustness import robustness_metrics

        return robustness_metrics(models_dir)
    return collect_metrics(models_dir, args.only)


def eval_models(args: argparse.Namespace) -> int:
    try:
        metrics = selected_metrics(args)
    except Exception as error:
        # e.g. the embedder's dlib oracle is not installed: say which part could not be measured.
        if type(error).__name__ != "OracleUnavailableError":
            raise
        print(f"error: {error} (install the dev extra 'oracle', or use --only detector)", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    elif "lfw" in metrics:
        from device.evaluation.lfw import report_lines

        print("\n".join(report_lines(metrics["lfw"])))
    else:
        for key, value in sorted(metrics.items()):
            print(f"{key}: {value}")
    return EXIT_OK
