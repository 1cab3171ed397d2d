"""Stage A's model (crome_edge/recipes/smol_stage_a.py): the optional "keep the eye" head, on random eye tokens.

The eye itself is not needed: the Q-Former reads cached tokens, so an identity stands in for it."""
import torch
from torch import nn

from crome_edge.backbones.smol import EYE_CHANNELS, NUM_QUERIES, POSITION_CHANNELS, QFORMER_WIDTH
from crome_edge.recipes.smol_stage_a import HEADS, StageAModel, pooled


def _tokens(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 196, EYE_CHANNELS + POSITION_CHANNELS, generator=torch.Generator().manual_seed(1))


def test_keep_eye_head_predicts_the_pooled_tokens_and_is_made_only_when_asked():
    tokens = _tokens()
    torch.manual_seed(0)
    keeping = StageAModel(nn.Identity(), seed=0, keep_eye=True).eval()  # type: ignore[arg-type]
    torch.manual_seed(0)
    plain = StageAModel(nn.Identity(), seed=0, keep_eye=False).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        logits, kept = keeping(tokens)
        plain_logits, nothing = plain(tokens)
    assert kept is not None and kept.shape == pooled(tokens).shape == (3, 2 * (EYE_CHANNELS + POSITION_CHANNELS))
    assert nothing is None and not any(name.startswith("keep_eye") for name, _ in plain.named_parameters())
    assert [l.shape[1] for l in logits] == [len(answers) for answers in HEADS.values()]
    assert keeping.keep_eye is not None and keeping.keep_eye.in_features == NUM_QUERIES * QFORMER_WIDTH
    # the head is made after everything else, so the rest starts from the same draws with or without it
    for a, b in zip(logits, plain_logits):
        assert torch.equal(a, b)


def test_pooled_is_mean_then_max_over_positions():
    tokens = _tokens(2)
    out = pooled(tokens.half())
    width = tokens.shape[2]
    assert torch.allclose(out[:, :width], tokens.half().float().mean(1))
    assert torch.equal(out[:, width:], tokens.half().float().amax(1))
