"""Ground-truth captions and pretraining Q&A for a conveyor scene (the backbone's general abilities).

Answers are short and drawn from a closed vocabulary (`ANSWERS`), so exact-match accuracy is a fair
score; only the caption is a phrase. The line-3 task question lives in `line3.py`, not here.
"""
from __future__ import annotations

from crome_edge.synth.world import COLOUR_NAMES, DEFECTS, KINDS, NO_DEFECT, NO_PART, SceneInfo

Q_KIND = "What part is this?"
Q_COLOUR = "What colour is the part?"
Q_DEFECTIVE = "Is the part defective?"
Q_DEFECT = "What defect does the part have?"
Q_CAPTION = "Describe the part."

# Every pretraining question, in a fixed order (datasets write one line per question in this order).
PRETRAIN_QUESTIONS: tuple[str, ...] = (Q_KIND, Q_COLOUR, Q_DEFECTIVE, Q_DEFECT, Q_CAPTION)

# The closed answer set of each short-answer question (the caption is free text built from these). A frame with
# no part to judge (world.NO_PART: empty belt, part leaving) answers every question "no part".
ANSWERS: dict[str, tuple[str, ...]] = {
    Q_KIND: (*KINDS, NO_PART),
    Q_COLOUR: (*COLOUR_NAMES, NO_PART),
    Q_DEFECTIVE: ("yes", "no", NO_PART),
    Q_DEFECT: (*DEFECTS, NO_DEFECT, NO_PART),
}


def caption(scene: SceneInfo) -> str:
    """'a red gear with a crack', 'an orange washer with a missing hole', 'a blue bolt with no defect'."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    flaw = "no defect" if scene.defect == NO_DEFECT else f"a {scene.defect}"
    return f"{article} {scene.colour} {scene.kind} with {flaw}"


def answer(question: str, scene: SceneInfo) -> str:
    """The ground-truth answer to one of PRETRAIN_QUESTIONS (KeyError-free: unknown -> ValueError)."""
    if question in PRETRAIN_QUESTIONS and not scene.present:
        return NO_PART
    if question == Q_KIND:
        return scene.kind
    if question == Q_COLOUR:
        return scene.colour
    if question == Q_DEFECTIVE:
        return "yes" if scene.defective else "no"
    if question == Q_DEFECT:
        return scene.defect
    if question == Q_CAPTION:
        return caption(scene)
    raise ValueError(f"not a pretraining question: {question!r}; expected one of {PRETRAIN_QUESTIONS}")


def qa_pairs(scene: SceneInfo) -> list[tuple[str, str]]:
    """(question, answer) for every pretraining question, in PRETRAIN_QUESTIONS order."""
    return [(q, answer(q, scene)) for q in PRETRAIN_QUESTIONS]
