"""Choosing the matching threshold from the unit's own data: FAR and FRR by threshold.

The templates are all the unit keeps (enrolment pictures are never stored), so calibration works on them
plus a stranger set: faces of people who are certainly not enrolled (by default the pinned fixture
pictures that are not of the test residents; an operator can pass their own with ``--strangers``).

Comparisons are scored the way the unit decides a visit: a probe face against a subject is the probe's
best cosine similarity over that subject's templates (``device.identity.match``). So:

- genuine: each template of a subject with at least two templates, against the *other* templates of
  the same subject (leave-one-out; a template is never compared with itself);
- impostor: each template against every other subject, and each stranger face against every subject.

FAR(t) is the fraction of impostor comparisons at or above t (they would be accepted), FRR(t) the fraction
of genuine comparisons below t. The recommended threshold is the lowest one whose FAR is at most the
target: the lowest FRR that still meets the FAR target. With n impostor comparisons no FAR below 1/n can
be seen; the report says so and gives the "rule of three" 95 % upper bound 3/n for a FAR of zero seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from device.errors import UserError

Scores = NDArray[np.float32]

GRID_START = 0.5
GRID_STOP = 0.995
GRID_STEP = 0.005


class CalibrationError(UserError):
    """Not enough data to calibrate; the message says what is missing."""


@dataclass(frozen=True)
class ComparisonScores:
    genuine: Scores
    impostor: Scores
    subjects: int
    subjects_with_pairs: int
    strangers: int


def genuine_scores(templates: Mapping[str, NDArray[np.float32]]) -> Scores:
    """Leave-one-out best similarity of each template to the rest of its own subject."""
    scores: list[float] = []
    for rows in templates.values():
        if len(rows) < 2:
            continue
        similarity = rows @ rows.T
        np.fill_diagonal(similarity, -np.inf)
        scores.extend(float(value) for value in similarity.max(axis=1))
    return np.asarray(scores, dtype=np.float32)


def impostor_scores(templates: Mapping[str, NDArray[np.float32]], strangers: NDArray[np.float32]) -> Scores:
    """Best similarity of each other subject's template and each stranger face to every subject."""
    scores: list[float] = []
    for subject, rows in templates.items():
        probes = [other for name, other in templates.items() if name != subject]
        if len(strangers):
            probes.append(strangers)
        if not probes:
            continue
        stacked = np.concatenate(probes).astype(np.float32)
        scores.extend(float(value) for value in (stacked @ rows.T).max(axis=1))
    return np.asarray(scores, dtype=np.float32)


def collect_scores(
    templates: Mapping[str, NDArray[np.float32]], strangers: NDArray[np.float32]
) -> ComparisonScores:
    return ComparisonScores(
        genuine=genuine_scores(templates),
        impostor=impostor_scores(templates, strangers),
        subjects=len(templates),
        subjects_with_pairs=sum(1 for rows in templates.values() if len(rows) >= 2),
        strangers=len(strangers),
    )


@dataclass(frozen=True)
class LookAlike:
    """Two enrolled subjects whose templates match each other: most often one person enrolled twice."""

    first: str
    second: str
    similarity: float


def look_alike_subjects(templates: Mapping[str, NDArray[np.float32]], threshold: float) -> list[LookAlike]:
    """Pairs of subjects with a template of one at or above ``threshold`` against a template of the other,
    most similar first: the unit cannot tell them apart, and their comparisons count as impostors."""
    subjects = list(templates)
    pairs = []
    for index, first in enumerate(subjects):
        for second in subjects[index + 1 :]:
            similarity = float((templates[first] @ templates[second].T).max())
            if similarity >= threshold:
                pairs.append(LookAlike(first, second, similarity))
    return sorted(pairs, key=lambda pair: -pair.similarity)


def threshold_grid() -> NDArray[np.float64]:
    count = round((GRID_STOP - GRID_START) / GRID_STEP) + 1
    return np.round(GRID_START + GRID_STEP * np.arange(count), 3)


def false_accept_rate(impostor: Scores, threshold: float) -> float | None:
    return None if len(impostor) == 0 else float(np.mean(impostor >= threshold))


def false_reject_rate(genuine: Scores, threshold: float) -> float | None:
    return None if len(genuine) == 0 else float(np.mean(genuine < threshold))


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    far: float | None
    frr: float | None


@dataclass(frozen=True)
class Calibration:
    scores: ComparisonScores
    rows: list[ThresholdRow]
    target_far: float
    recommended: float
    far_resolution: float  # 1/n impostor comparisons: the smallest FAR this data can show
    far_upper_bound_95: float  # for the recommended threshold when no false accept was seen: 3/n
    notes: list[str]

    @property
    def achievable_far(self) -> float:
        """The lowest FAR this data can vouch for (95% confidence, zero false accepts seen): 3/n."""
        return self.far_upper_bound_95

    @property
    def supports_target(self) -> bool:
        """Whether the data can show the target FAR at all; if not, nothing should be recommended."""
        return self.far_upper_bound_95 <= self.target_far

    def row_at(self, threshold: float) -> ThresholdRow:
        return ThresholdRow(
            threshold,
            false_accept_rate(self.scores.impostor, threshold),
            false_reject_rate(self.scores.genuine, threshold),
        )

    def as_json(self, configured: float) -> dict[str, object]:
        def rate(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "genuine_comparisons": len(self.scores.genuine),
            "impostor_comparisons": len(self.scores.impostor),
            "subjects": self.scores.subjects,
            "subjects_with_genuine_pairs": self.scores.subjects_with_pairs,
            "stranger_faces": self.scores.strangers,
            "target_far": self.target_far,
            "recommended_threshold": self.recommended,
            "supports_target": self.supports_target,
            "achievable_far": rate(self.achievable_far),
            "recommended": _row_json(self.row_at(self.recommended), rate),
            "configured_threshold": configured,
            "configured": _row_json(self.row_at(configured), rate),
            "far_resolution": rate(self.far_resolution),
            "far_upper_bound_95": rate(self.far_upper_bound_95),
            "genuine_min": _extreme(self.scores.genuine, np.min),
            "impostor_max": _extreme(self.scores.impostor, np.max),
            "table": [_row_json(row, rate) for row in self.rows],
            "notes": self.notes,
        }


def _row_json(row: ThresholdRow, rate: Callable[[float | None], float | None]) -> dict[str, object]:
    return {"threshold": row.threshold, "far": rate(row.far), "frr": rate(row.frr)}


def _extreme(scores: Scores, reducer: Callable[[Scores], np.floating[Any]]) -> float | None:
    return None if len(scores) == 0 else round(float(reducer(scores)), 4)


def calibrate(scores: ComparisonScores, target_far: float) -> Calibration:
    if not 0.0 <= target_far < 1.0:
        raise CalibrationError(f"--target-far must be in [0, 1), got {target_far}")
    if scores.subjects == 0:
        raise CalibrationError("nobody is enrolled: calibration compares faces with the enrolled templates")
    if len(scores.impostor) == 0:
        raise CalibrationError(
            "no impostor comparisons: enrol at least two subjects or give stranger pictures (--strangers)"
        )
    grid = threshold_grid()
    rows = [
        ThresholdRow(
            float(t),
            false_accept_rate(scores.impostor, float(t)),
            false_reject_rate(scores.genuine, float(t)),
        )
        for t in grid
    ]
    meeting = [row.threshold for row in rows if row.far is not None and row.far <= target_far]
    notes: list[str] = []
    if not meeting:
        raise CalibrationError(
            f"no threshold up to {GRID_STOP} keeps FAR at or below {target_far}: impostor similarity reaches "
            f"{float(scores.impostor.max()):.3f}; check the stranger set holds no enrolled person"
        )
    recommended = meeting[0]
    impostors = len(scores.impostor)
    resolution = 1.0 / impostors
    upper = min(1.0, 3.0 / impostors)
    if target_far < resolution:
        notes.append(
            f"{impostors} impostor comparisons cannot show a FAR below {resolution:.2g}; a threshold with no "
            f"false accept among them is only known to have FAR <= {upper:.2g} (95%). Add stranger "
            "pictures for a tighter estimate"
        )
    if len(scores.genuine) == 0:
        notes.append("no subject has two templates: FRR cannot be measured (enrol with several pictures)")
    elif len(scores.genuine) < 10:
        notes.append(f"only {len(scores.genuine)} genuine comparisons: the FRR column is a rough estimate")
    return Calibration(scores, rows, target_far, recommended, resolution, upper, notes)


def recommendation_lines(calibration: Calibration, configured: float) -> list[str]:
    """A threshold only when the data can support the target FAR; otherwise what it can support."""
    impostors = len(calibration.scores.impostor)
    achievable = (
        f"achievable FAR with this data: {calibration.achievable_far:.2g} "
        f"({impostors} impostor comparisons, 95% confidence)"
    )
    if not calibration.supports_target:
        needed = math.ceil(3.0 / calibration.target_far) if calibration.target_far > 0 else None
        more = f"about {needed} impostor comparisons" if needed else "a FAR of exactly 0 cannot be shown"
        return [
            achievable,
            f"not enough comparisons for FAR {calibration.target_far:g}; keep the default "
            f"(configured: {configured:.3f}). For that target: {more} (add --strangers pictures)",
        ]
    return [
        achievable,
        f"recommended threshold {calibration.recommended:.3f} for FAR <= {calibration.target_far:g} "
        f"(configured: {configured:.3f}; set [matching] threshold to change it)",
    ]


def recommendation_verdict(calibration: Calibration, configured: float) -> str:
    """The recommendation in a few words, as the plot shows it; the same as the text's last line."""
    if not calibration.supports_target:
        return f"not enough comparisons for FAR {calibration.target_far:g}: keep the default {configured:.3f}"
    return f"recommended threshold {calibration.recommended:.3f} for FAR <= {calibration.target_far:g}"


def recommended_label(calibration: Calibration) -> str:
    """What the threshold meeting the target is called: "recommended" only when the data can show the
    target FAR at all (the text table and the plot use this one word)."""
    return "recommended" if calibration.supports_target else "meets the target here (too little data)"


def format_table(calibration: Calibration, configured: float, start: float = 0.80) -> list[str]:
    """Text rows from ``start`` to the top of the grid, every 0.01, with the two thresholds marked."""

    def rate(value: float | None) -> str:
        return "    -" if value is None else f"{value:7.2%}"

    lines = ["threshold      FAR      FRR"]
    label = f"  <- {recommended_label(calibration)}"
    marks = {round(calibration.recommended, 3): label, round(configured, 3): "  <- configured"}
    wanted = {round(t, 3) for t in np.arange(start, GRID_STOP + 1e-9, 0.01)} | set(marks)
    for row in calibration.rows:
        if round(row.threshold, 3) not in wanted:
            continue
        mark = marks.get(round(row.threshold, 3), "")
        lines.append(f"{row.threshold:9.3f}  {rate(row.far)}  {rate(row.frr)}{mark}")
    if round(configured, 3) not in {round(row.threshold, 3) for row in calibration.rows}:
        row = calibration.row_at(configured)
        lines.append(f"{configured:9.3f}  {rate(row.far)}  {rate(row.frr)}  <- configured")
    return lines


# --- the plot (OpenCV drawing only: no plotting library on the unit) ---------------------------------

PLOT_SIZE = (720, 460)  # width, height
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 60, 60
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
LIGHT = (225, 225, 225)
RED = (40, 40, 210)  # BGR: FAR
BLUE = (200, 90, 20)  # BGR: FRR
GREEN = (40, 150, 40)
AMBER = (0, 140, 230)  # BGR: a threshold that meets the target on too little data to recommend it


@dataclass(frozen=True)
class PlotMark:
    threshold: float
    label: str
    colour: tuple[int, int, int]


def plot_marks(calibration: Calibration, configured: float) -> list[PlotMark]:
    """The vertical lines of the plot, named as the text names them: green "recommended" only when the
    text recommends that threshold, amber "too little data" when it says to keep the default."""
    marked = PlotMark(calibration.recommended, f"recommended {calibration.recommended:.3f}", GREEN)
    if not calibration.supports_target:
        marked = PlotMark(calibration.recommended, f"too little data {calibration.recommended:.3f}", AMBER)
    return [PlotMark(configured, f"configured {configured:.3f}", GREY), marked]


def draw_plot(calibration: Calibration, configured: float, path: Path) -> None:
    """FAR and FRR against the threshold, the recommended and configured thresholds as vertical lines."""
    width, height = PLOT_SIZE
    canvas = np.full((height, width, 3), 255, np.uint8)
    x_min, x_max = GRID_START, 1.0
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM

    def to_px(threshold: float, rate: float) -> tuple[int, int]:
        x = MARGIN_LEFT + (threshold - x_min) / (x_max - x_min) * plot_w
        y = MARGIN_TOP + (1.0 - rate) * plot_h
        return round(x), round(y)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for step in range(11):  # grid and axis labels
        rate = step / 10
        y = to_px(x_min, rate)[1]
        cv2.line(canvas, (MARGIN_LEFT, y), (width - MARGIN_RIGHT, y), LIGHT, 1)
        cv2.putText(canvas, f"{rate:.1f}", (MARGIN_LEFT - 40, y + 4), font, 0.4, BLACK, 1, cv2.LINE_AA)
    for step in range(11):
        threshold = x_min + step * (x_max - x_min) / 10
        x = to_px(threshold, 0.0)[0]
        cv2.line(canvas, (x, MARGIN_TOP), (x, height - MARGIN_BOTTOM), LIGHT, 1)
        label_y = height - MARGIN_BOTTOM + 18
        cv2.putText(canvas, f"{threshold:.2f}", (x - 16, label_y), font, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (MARGIN_LEFT, MARGIN_TOP), (width - MARGIN_RIGHT, height - MARGIN_BOTTOM), BLACK, 1)

    for mark in plot_marks(calibration, configured):
        x = to_px(mark.threshold, 0.0)[0]
        cv2.line(canvas, (x, MARGIN_TOP), (x, height - MARGIN_BOTTOM), mark.colour, 1, cv2.LINE_AA)
        label_y = MARGIN_TOP - 22 if mark.colour == GREY else MARGIN_TOP - 8
        label_x = min(x - 60, width - MARGIN_RIGHT - 7 * len(mark.label))
        cv2.putText(canvas, mark.label, (label_x, label_y), font, 0.4, mark.colour, 1, cv2.LINE_AA)

    for attribute, colour in (("far", RED), ("frr", BLUE)):
        points = [
            to_px(row.threshold, value)
            for row in calibration.rows
            if (value := getattr(row, attribute)) is not None
        ]
        if len(points) >= 2:
            cv2.polylines(canvas, [np.asarray(points, np.int32)], False, colour, 2, cv2.LINE_AA)

    legend_y = height - 18
    cv2.putText(canvas, "FAR (impostors accepted)", (MARGIN_LEFT, legend_y), font, 0.45, RED, 1, cv2.LINE_AA)
    cv2.putText(
        canvas, "FRR (residents rejected)", (MARGIN_LEFT + 230, legend_y), font, 0.45, BLUE, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, "threshold", (width - MARGIN_RIGHT - 80, legend_y), font, 0.45, BLACK, 1, cv2.LINE_AA)
    counts = (
        f"{len(calibration.scores.genuine)} genuine, {len(calibration.scores.impostor)} impostor comparisons"
    )
    cv2.putText(canvas, counts, (MARGIN_LEFT, 16), font, 0.45, BLACK, 1, cv2.LINE_AA)
    verdict = recommendation_verdict(calibration, configured)
    colour = plot_marks(calibration, configured)[-1].colour
    cv2.putText(canvas, verdict, (MARGIN_LEFT, 32), font, 0.45, colour, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise CalibrationError(f"could not write the plot to {path} (use a .png name)")
