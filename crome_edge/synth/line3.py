"""The line-3 sorting task: a question the pretrained backbone never saw, answered by a fixed rule.

Question: "Which bin does this part go to?"  Rule (depends on defect, kind and colour):

    0. no part to judge (empty belt, a part leaving the frame)       -> "no part"
    1. any defective part (scratch, crack, missing hole, dent)      -> "scrap"
    2. a sound round part (hex nut, washer, gear):
         warm paint (red, orange, yellow)                            -> "bin a"
         cool paint (green, blue, purple)                            -> "bin b"
    3. a sound bolt or bracket (any colour)                          -> "bin c"

With the world's label distribution the answers come out at about no part 10%, scrap 36%, bin a 16%, bin b 16%,
bin c 22%. Frames come from seed ranges of their own (`splits.py`), disjoint from every pretraining
split, so no line-3 validation or test frame was ever seen by the backbone.
"""
from __future__ import annotations

from crome_edge.synth.world import NO_PART, SceneInfo

LINE3_QUESTION = "Which bin does this part go to?"
LINE3_ANSWERS: tuple[str, ...] = ("scrap", "bin a", "bin b", "bin c", NO_PART)

ROUND_KINDS = frozenset({"hex nut", "washer", "gear"})
WARM_COLOURS = frozenset({"red", "orange", "yellow"})
COOL_COLOURS = frozenset({"green", "blue", "purple"})


def line3_answer(scene: SceneInfo) -> str:
    """The bin a part goes to under the line-3 rule (see the module docstring)."""
    if not scene.present:  # an empty belt or a part leaving the frame: nothing to judge
        return NO_PART
    if scene.defective:
        return "scrap"
    if scene.kind in ROUND_KINDS:
        return "bin a" if scene.colour in WARM_COLOURS else "bin b"
    return "bin c"


def line3_split(split: str, n: int, start: int = 0, size: int = 128):
    """Line-3 samples (image, question, answer, scene) of frames start .. start+n-1 of a split."""
    from crome_edge.synth.samples import iter_split  # samples imports this module

    return iter_split("line3", split, n, start, size)
