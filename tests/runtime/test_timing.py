"""The latency recorder's timed blocks: what health and the benchmark's stage figures are made of."""

from __future__ import annotations

import time

import pytest

from device.timing import LatencyRecorder


def test_a_timed_block_records_its_duration_under_its_stage() -> None:
    recorder = LatencyRecorder()
    with recorder.time("align"):
        time.sleep(0.02)
    assert recorder.count("align") == 1
    assert 15.0 <= recorder.total_ms("align") < 2000.0
    assert recorder.count("detect") == 0


def test_a_block_that_raises_is_still_recorded_and_the_error_goes_on() -> None:
    recorder = LatencyRecorder()
    with pytest.raises(ValueError, match="bad keypoints"), recorder.time("align"):
        raise ValueError("bad keypoints")
    assert recorder.count("align") == 1


def test_nested_blocks_of_different_stages_each_count_their_own_time() -> None:
    recorder = LatencyRecorder()
    with recorder.time("frame"):
        time.sleep(0.01)
        with recorder.time("detect"):
            time.sleep(0.02)
    assert recorder.count("frame") == recorder.count("detect") == 1
    assert recorder.total_ms("frame") >= recorder.total_ms("detect") + 5.0
