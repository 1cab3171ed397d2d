"""The line-5 spec check: a second line task the pretrained backbone never saw, answered by a fixed rule.

Question: "Does this part meet the line 5 spec?"  Line 5 assembles bolts and gears painted blue, green or
yellow; a scratch is cosmetic and allowed there, any other defect is not. Checked in this order:

    1. a crack, dent or missing hole                                 -> "reject: defect"
    2. not a bolt or gear (hex nut, washer, bracket)                 -> "reject: wrong part"
    3. not painted blue, green or yellow                             -> "reject: wrong colour"
    4. otherwise (scratched or sound)                                -> "pass"

With the world's label distribution the answers come out at about reject: defect 30%, wrong part 42%,
wrong colour 14%, pass 14%. Unlike line 3 it depends on *which* defect a part has (a scratch passes) and
groups kinds and colours differently, so one adapter's rule does not answer the other's question. Frames
come from seed ranges of their own (`splits.py`).
"""
from __future__ import annotations

from crome_edge.synth.world import SceneInfo

LINE5_QUESTION = "Does this part meet the line 5 spec?"
LINE5_ANSWERS: tuple[str, ...] = ("pass", "reject: defect", "reject: wrong part", "reject: wrong colour")

LINE5_KINDS = frozenset({"bolt", "gear"})
LINE5_COLOURS = frozenset({"blue", "green", "yellow"})
COSMETIC_DEFECTS = frozenset({"scratch"})


def line5_answer(scene: SceneInfo) -> str:
    """The line-5 spec verdict for a part (see the module docstring)."""
    if scene.defective and scene.defect not in COSMETIC_DEFECTS:
        return "reject: defect"
    if scene.kind not in LINE5_KINDS:
        return "reject: wrong part"
    if scene.colour not in LINE5_COLOURS:
        return "reject: wrong colour"
    return "pass"
