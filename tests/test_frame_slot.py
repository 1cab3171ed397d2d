"""FrameSlot keeps the frames of the last explained answers, bounded, beside the newest one."""
import numpy as np

from crome_runtime.serve.reader import EXPLAINED_FRAMES_KEPT, FrameSlot


def test_kept_frames_are_the_newest_and_the_last_explained_ones_only():
    slot = FrameSlot()
    image = np.zeros((4, 4, 3), np.uint8)
    frames = [slot.put(image) for _ in range(EXPLAINED_FRAMES_KEPT + 3)]
    for frame in frames[:-1]:
        slot.keep(frame)
    assert slot.kept(frames[-1].id) is frames[-1]  # the newest, kept or not
    held = [f.id for f in frames[:-1] if slot.kept(f.id) is not None]
    assert held == [f.id for f in frames[-1 - EXPLAINED_FRAMES_KEPT:-1]]  # the last EXPLAINED_FRAMES_KEPT kept
    slot.keep(frames[-1 - EXPLAINED_FRAMES_KEPT])  # kept again: now the most recent, so the next eviction spares it
    slot.keep(frames[-1])
    assert slot.kept(frames[-1 - EXPLAINED_FRAMES_KEPT].id) is not None
    assert slot.kept(frames[-EXPLAINED_FRAMES_KEPT].id) is None
    assert slot.kept(10**9) is None
