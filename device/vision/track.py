"""Tracking: links each frame's detections to the people already in view, so that one visit = one track.

Association is greedy on a combined affinity: box IoU plus keypoint agreement (mean keypoint distance
relative to the face width). Keypoints keep a fast-moving or quickly growing face (someone walking towards
the camera) on its track when the boxes of consecutive frames barely overlap.

States: a track is ``new`` until it was seen in ``confirm_frames`` frames (a one-frame false detection
never becomes a visit), then ``confirmed``; after ``max_lost_frames`` frames without a detection it is
``lost`` and handed back once in ``TrackUpdate.ended``. The pipeline decides once per confirmed track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device.config import TrackingSection
from device.types import Box, Detection, Track, TrackState

HISTORY = 8  # detections kept per track: enough for the newest box and keypoints, bounded for long visits
KEYPOINT_REACH = 1.0  # a face may move one face width per frame (walking past a close camera at 15 fps)
KEYPOINTS_USED = 4  # eyes, nose tip, mouth: the ear points of BlazeFace wander with pose
NEW_TRACK_GRACE = 1  # frames an unconfirmed track may miss before it is discarded


def iou(a: Box, b: Box) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    union = a.area + b.area - intersection
    return intersection / union if union > 0 else 0.0


def keypoint_affinity(a: Detection, b: Detection) -> float:
    """1 when the keypoints coincide, 0 at ``KEYPOINT_REACH`` face widths of mean distance or more."""
    scale = max(1.0, (a.box.width + b.box.width) / 2.0)
    distance = float(
        np.mean(np.linalg.norm(a.keypoints[:KEYPOINTS_USED] - b.keypoints[:KEYPOINTS_USED], axis=1))
    )
    return max(0.0, 1.0 - distance / (KEYPOINT_REACH * scale))


def affinity(previous: Detection, current: Detection, iou_threshold: float) -> float:
    """How likely ``current`` continues ``previous``; 0 means "not the same face"."""
    overlap = iou(previous.box, current.box)
    keypoints = keypoint_affinity(previous, current)
    if overlap < iou_threshold and keypoints <= 0.0:
        return 0.0
    return overlap + keypoints


@dataclass
class TrackRecord:
    """The tracker's bookkeeping around a ``Track``."""

    track: Track
    hits: int = 1
    missed: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0

    @property
    def latest(self) -> Detection:
        return self.track.detections[-1]


@dataclass
class TrackUpdate:
    """What one frame changed: detections matched to tracks, and visits that ended."""

    matched: list[tuple[Track, Detection]] = field(default_factory=list)  # tracks seen in this frame
    confirmed: list[Track] = field(default_factory=list)  # became confirmed in this frame
    ended: list[Track] = field(default_factory=list)  # confirmed tracks that are now lost
    discarded: list[Track] = field(default_factory=list)  # never confirmed, gone


class Tracker:
    def __init__(self, config: TrackingSection) -> None:
        self._config = config
        self._records: dict[int, TrackRecord] = {}
        self._next_id = 1

    @property
    def active(self) -> list[Track]:
        return [record.track for record in self._records.values()]

    @property
    def has_active(self) -> bool:
        return bool(self._records)

    def record(self, track_id: int) -> TrackRecord | None:
        return self._records.get(track_id)

    def update(self, detections: list[Detection], ts: float) -> TrackUpdate:
        update = TrackUpdate()
        pairs = self._associate(detections)
        seen: set[int] = set()
        for track_id, detection in pairs:
            record = self._records[track_id]
            record.track.detections.append(detection)
            del record.track.detections[:-HISTORY]
            record.hits += 1
            record.missed = 0
            record.last_ts = ts
            seen.add(track_id)
            if record.track.state is TrackState.NEW and record.hits >= self._config.confirm_frames:
                record.track.state = TrackState.CONFIRMED
                update.confirmed.append(record.track)
            update.matched.append((record.track, detection))
        assigned = {id(detection) for _, detection in pairs}
        for detection in detections:
            if id(detection) in assigned:
                continue
            record = self._start(detection, ts)
            seen.add(record.track.id)
            if self._config.confirm_frames <= 1:
                record.track.state = TrackState.CONFIRMED
                update.confirmed.append(record.track)
            update.matched.append((record.track, detection))
        self._age(seen, update)
        return update

    def finish(self) -> TrackUpdate:
        """Ends every track (end of the stream or shutdown): confirmed ones are reported as ended."""
        update = TrackUpdate()
        for record in list(self._records.values()):
            self._end(record, update)
        return update

    def _associate(self, detections: list[Detection]) -> list[tuple[int, Detection]]:
        candidates: list[tuple[float, int, int]] = []
        for track_id, record in self._records.items():
            for index, detection in enumerate(detections):
                score = affinity(record.latest, detection, self._config.iou_threshold)
                if score > 0.0:
                    candidates.append((score, track_id, index))
        candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
        used_tracks: set[int] = set()
        used_detections: set[int] = set()
        pairs: list[tuple[int, Detection]] = []
        for _, track_id, index in candidates:
            if track_id in used_tracks or index in used_detections:
                continue
            used_tracks.add(track_id)
            used_detections.add(index)
            pairs.append((track_id, detections[index]))
        return pairs

    def _start(self, detection: Detection, ts: float) -> TrackRecord:
        track = Track(id=self._next_id, detections=[detection], state=TrackState.NEW)
        self._next_id += 1
        record = TrackRecord(track=track, first_ts=ts, last_ts=ts)
        self._records[track.id] = record
        return record

    def _age(self, seen: set[int], update: TrackUpdate) -> None:
        for record in list(self._records.values()):
            if record.track.id in seen:
                continue
            record.missed += 1
            # An unconfirmed track gets one frame of grace only: it was a spurious box, or a face leaving.
            limit = NEW_TRACK_GRACE if record.track.state is TrackState.NEW else self._config.max_lost_frames
            if record.missed > limit:
                self._end(record, update)

    def _end(self, record: TrackRecord, update: TrackUpdate) -> None:
        del self._records[record.track.id]
        was_confirmed = record.track.state is TrackState.CONFIRMED
        record.track.state = TrackState.LOST
        (update.ended if was_confirmed else update.discarded).append(record.track)
