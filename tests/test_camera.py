"""The synthetic conveyor camera and its video files (stand-ins for a real camera, docs/architecture.md §5)."""
import time

import cv2
import numpy as np
import pytest

from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.synth.camera import SyntheticCamera, write_video


def _read(camera, n):
    frames, scenes = [], []
    for _ in range(n):
        ok, frame = camera.read()
        assert ok
        frames.append(frame)
        scenes.append(camera.current_scene())
    return frames, scenes


def test_parts_cross_the_belt_one_after_another():
    camera = SyntheticCamera(fps=10, size=(160, 120), seed=3, realtime=False, crossing_s=2.0, gap_s=0.5)
    assert camera.current_scene() is None
    frames, scenes = _read(camera, 3 * camera.period)  # 3 parts, 25 frames each
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for a, b in zip(frames, frames[1:]))  # moving
    for number in range(3):
        cycle = scenes[number * camera.period : (number + 1) * camera.period]
        in_view = [s for s in cycle if s is not None]
        assert 15 <= len(in_view) <= 22 and cycle[-1] is None  # crosses in ~20 frames, then empty belt
        assert len({(s.kind, s.colour, s.defect) for s in in_view}) == 1  # one part per crossing
        xs = [s.geometry.cx for s in in_view]
        steps = np.diff(xs)
        assert np.allclose(steps, steps[0]) and steps[0] > 5  # steady speed, left to right
        assert xs[0] < in_view[0].geometry.radius and xs[-1] > 160 - in_view[0].geometry.radius  # enters, leaves
    assert camera.frame_index == 3 * camera.period - 1 and camera.get(cv2.CAP_PROP_POS_FRAMES) == 3 * camera.period


def test_camera_is_deterministic_and_cv2_like():
    a, b = SyntheticCamera(seed=5, realtime=False), SyntheticCamera(seed=5, realtime=False)
    fa, sa = _read(a, 20)
    fb, sb = _read(b, 20)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(fa, fb)) and sa == sb
    assert fa[0].shape == (240, 320, 3)  # default 320x240
    assert a.render(19)[0].tobytes() == fa[19].tobytes()  # frame k depends on (seed, k) only
    assert a.isOpened() and a.get(cv2.CAP_PROP_FPS) == 15.0
    assert (a.get(cv2.CAP_PROP_FRAME_WIDTH), a.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320.0, 240.0)
    a.release()
    assert not a.isOpened() and a.read() == (False, None)
    limited = SyntheticCamera(realtime=False, frames=2)
    assert limited.read()[0] and limited.read()[0] and limited.read() == (False, None)
    with pytest.raises(CromeError):
        SyntheticCamera(fps=0)


def test_realtime_pacing_and_disabling_it():
    paced = SyntheticCamera(fps=50, size=(64, 48))
    start = time.monotonic()
    _read(paced, 11)
    assert time.monotonic() - start >= 10 / 50 - 0.005  # frame k is not delivered before k/fps
    fast = SyntheticCamera(fps=5, size=(64, 48), realtime=False)
    start = time.monotonic()
    _read(fast, 11)
    assert time.monotonic() - start < 10 / 5 / 4  # unpaced: far faster than 2 s of camera time


def test_a_slow_reader_misses_frames_like_a_live_camera():
    camera = SyntheticCamera(fps=100, size=(64, 48))
    camera.read()
    time.sleep(0.1)  # ~10 frame periods
    camera.read()
    assert camera.frame_index >= 5 and camera.dropped == camera.frame_index - 1


@pytest.mark.parametrize("suffix, tags", [(".avi", {"mjpg"}), (".mp4", {"mp4v", "fmp4"})])
def test_video_round_trips_through_cv2(tmp_path, suffix, tags):
    path = tmp_path / f"line3{suffix}"
    scenes = write_video(path, 24, fps=12, size=(160, 120), seed=2)
    assert len(scenes) == 24 and any(s is not None for s in scenes)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower() in tags  # ffmpeg reads mp4v as FMP4
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12)
    camera = SyntheticCamera(fps=12, size=(160, 120), seed=2, realtime=False)
    decoded = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (120, 160, 3)
        expected = camera.render(decoded)[0]
        assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 8  # lossy codec, same picture
        decoded += 1
    capture.release()
    assert decoded == 24


def test_video_errors_and_cli(tmp_path, capsys):
    with pytest.raises(CromeError, match="must end in"):
        write_video(tmp_path / "x.mkv", 3)
    with pytest.raises(CromeError, match="does not exist"):
        write_video(tmp_path / "no" / "x.avi", 3)
    out = tmp_path / "belt.avi"
    assert main(["data", "video", "--out", str(out), "--frames", "10", "--size", "96x64", "--fps", "10"]) == 0
    assert "wrote 10 frames" in capsys.readouterr().out
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 10 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    assert main(["data", "video", "--out", str(out), "--size", "big"]) == 2
