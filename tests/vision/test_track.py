"""The tracker on synthetic face geometry: visits, flicker, two people at once, false detections."""

from __future__ import annotations

import numpy as np

from device.config import TrackingSection
from device.types import Box, Detection, TrackState
from device.vision.track import Tracker, TrackUpdate, iou

# Keypoints of a frontal face relative to its box (x, y as fractions of width/height), Keypoint order.
FACE_LAYOUT = np.array(
    [[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.5, 0.75], [0.05, 0.45], [0.95, 0.45]], np.float32
)


def face(x: float, y: float, size: float, score: float = 0.9) -> Detection:
    keypoints = np.array([x, y], np.float32) + FACE_LAYOUT * size
    return Detection(Box(x, y, x + size, y + size), score, keypoints.astype(np.float32))


def walk_in(frames: int, start_x: float = 100.0, grow: float = 6.0, step: float = 12.0) -> list[Detection]:
    """Someone walking towards the camera: the face moves sideways and grows each frame."""
    return [face(start_x + step * i, 150.0 - grow * i / 2, 60.0 + grow * i) for i in range(frames)]


def run(tracker: Tracker, frames: list[list[Detection]]) -> list[TrackUpdate]:
    return [tracker.update(detections, ts=index / 15) for index, detections in enumerate(frames)]


def ended(updates: list[TrackUpdate]) -> list[int]:
    return [track.id for update in updates for track in update.ended]


def test_one_visit_gives_one_track_that_ends_after_the_face_is_gone() -> None:
    config = TrackingSection()
    tracker = Tracker(config)
    updates = run(tracker, [[d] for d in walk_in(20)] + [[]] * (config.max_lost_frames + 1))
    assert ended(updates) == [1]
    assert not tracker.has_active
    confirmed = [track.id for update in updates for track in update.confirmed]
    assert confirmed == [1]


def test_three_visits_separated_by_empty_scenes_give_three_tracks() -> None:
    config = TrackingSection()
    gap = [[]] * (config.max_lost_frames + 3)
    visit = [[d] for d in walk_in(12)]
    tracker = Tracker(config)
    updates = run(tracker, visit + gap + visit + gap + visit + gap)
    assert len(ended(updates)) == 3
    assert len(set(ended(updates))) == 3


def test_a_short_detector_dropout_keeps_the_same_track() -> None:
    config = TrackingSection(max_lost_frames=5)
    frames = [[d] for d in walk_in(20)]
    for index in (6, 7, 8, 13):  # the detector misses the face for a few frames
        frames[index] = []
    tracker = Tracker(config)
    updates = run(tracker, frames + [[]] * 6)
    assert ended(updates) == [1]


def test_fast_motion_with_little_box_overlap_stays_on_the_track_thanks_to_keypoints() -> None:
    previous, current = face(100, 100, 80), face(150, 100, 80)  # 50 px jump: IoU 0.23 < 0.3
    assert iou(previous.box, current.box) < TrackingSection().iou_threshold
    tracker = Tracker(TrackingSection())
    updates = run(tracker, [[previous], [current], [face(200, 100, 80)]])
    assert {track.id for update in updates for track, _ in update.matched} == {1}


def test_two_people_at_once_get_two_tracks_that_do_not_swap() -> None:
    tracker = Tracker(TrackingSection())
    left = walk_in(10, start_x=40, step=4)
    right = walk_in(10, start_x=420, step=-4)
    updates = run(tracker, [[a, b] for a, b in zip(left, right, strict=True)])
    for update in updates:
        by_track = {track.id: detection.box.x0 for track, detection in update.matched}
        assert by_track[1] < by_track[2]


def test_a_single_false_detection_never_becomes_a_visit() -> None:
    tracker = Tracker(TrackingSection(confirm_frames=2))
    updates = run(tracker, [[face(300, 200, 50, score=0.61)], [], [], []])
    assert ended(updates) == []
    assert [track.state for update in updates for track in update.discarded] == [TrackState.LOST]


def test_finish_ends_confirmed_tracks_at_the_end_of_the_stream() -> None:
    tracker = Tracker(TrackingSection())
    run(tracker, [[d] for d in walk_in(5)])
    assert [track.id for track in tracker.finish().ended] == [1]
    assert not tracker.has_active
