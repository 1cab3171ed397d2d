"""The line-5 spec check: a second line task the pretrained backbone never saw, answered by a fixed rule.

Question: "Does this part meet the line 5 spec?"  Line 5 assembles bolts and gears painted blue, green or
yellow; a scratch is cosmetic and allowed there, any other defect is not. Checked in this order:

    0. no part to judge (empty belt, a part leaving the frame)       -> "no part"
    1. a crack, dent or missing hole                                 -> "reject: defect"
    2. not a bolt or gear (hex nut, washer, bracket)                 -> "reject: wrong part"
    3. not painted blue, green or yellow                             -> "reject: wrong colour"
    4. otherwise (scratched or sound)                                -> "pass"

With the world's label distribution the answers come out at about no part 10%, reject: defect 27%, wrong
part 38%, wrong colour 13%, pass 13%. Unlike line 3 it depends on *which* defect a part has (a scratch passes) and
groups kinds and colours differently, so one adapter's rule does not answer the other's question. Frames
come from seed ranges of their own (`splits.py`).
"""
from __future__ import annotations

from crome_edge.synth.world import NO_PART, SceneInfo

LINE5_QUESTION = "Does this part meet the line 5 spec?"
LINE5_ANSWERS: tuple[str, ...] = ("pass", "reject: defect", "reject: wrong part", "reject: wrong colour", NO_PART)

LINE5_KINDS = frozenset({"bolt", "gear"})
LINE5_COLOURS = frozenset({"blue", "green", "yellow"})
COSMETIC_DEFECTS = frozenset({"scratch"})


def line5_answer(scene: SceneInfo) -> str:
    """The line-5 spec verdict for a part (see the module docstring)."""
    if not scene.present:  # an empty belt or a part leaving the frame: nothing to judge
        return NO_PART
    if scene.defective and scene.defect not in COSMETIC_DEFECTS:
        return "reject: defect"
    if scene.kind not in LINE5_KINDS:
        return "reject: wrong part"
    if scene.colour not in LINE5_COLOURS:
        return "reject: wrong colour"
    return "pass"
