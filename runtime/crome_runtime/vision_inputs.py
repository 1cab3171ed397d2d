"""The vision graph's feeds: normalised pixels and, for an instruction-aware Q-Former, the questions' ids.

One definition for every caller of vision.onnx: the engine (batch 1, per frame and question) and the
exporter's INT8 calibration (batches of frames). Instruction ids are the Q-Former tokenizer's ids of the
question cut to `max_instruction_tokens`, right-padded with 0 under a 0/1 mask, as CromeModel builds them.
Torch-free. Not here: preprocessing a camera frame (preprocess.py), running the graph (engine.py).
"""
from __future__ import annotations

import numpy as np

from crome_runtime import formats
from crome_runtime.prompt import instruction_ids


def vision_feeds(pixels: np.ndarray, questions: list[str], backbone, qformer_tokenizer) -> dict[str, np.ndarray]:
    """pixels (B, 3, S, S) float32 + B questions -> vision.onnx feeds. backbone: anything with
    instruction_aware and max_instruction_tokens (the manifest's BackboneSpec, crome_edge's BackboneInfo)."""
    feeds: dict[str, np.ndarray] = {formats.IN_PIXEL_VALUES: np.ascontiguousarray(pixels, dtype=np.float32)}
    if backbone.instruction_aware:
        rows = [instruction_ids(qformer_tokenizer, q, backbone.max_instruction_tokens) for q in questions]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)  # (B, L) right-padded with 0
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, L) 1 on the question's tokens
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        feeds[formats.IN_INSTRUCTION_IDS], feeds[formats.IN_INSTRUCTION_MASK] = ids, mask
    return feeds
