"""`crome-edge train --whiten`: the visual projections train on whitened tokens and fold back into a plain adapter.

What the whitening computes (unit covariance, the mean mapped to zero), that it learns a faint direction AdamW
alone barely moves, and that a whitened run trains, saves a plain adapter, resumes bit for bit and is refused
where it cannot apply."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from crome_edge.adapter_file import load_adapter
from crome_edge.errors import CromeError
from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.training.checkpoint import TrainingInterrupted, load_checkpoint
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from crome_edge.training.whitening import Whitening, statistics_tokens, whiten_visual
from tests.support.datasets import synth_dataset
from tests.test_train import FAST, _interrupt_at


@pytest.fixture(scope="module")
def line3_data(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("line3w") / "line3", n=24)


def _config(data, out, **changes):
    return TrainConfig(data=str(data), out=str(out), backbone="tiny", **{**FAST, "whiten": True, **changes})


def _tokens(n=400, positions=3, d=24, seed=0):
    """Tokens with a large shared offset and per-direction scales spanning two orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 0, d)
    return 5.0 + torch.randn(n, positions, d, generator=g) * scales + torch.randn(positions, d, generator=g)


def test_whitened_coordinates_have_unit_covariance_and_the_mean_maps_to_zero():
    tokens = _tokens()
    w = Whitening(tokens).whitening.double()
    assert w.shape == (24, 23)  # every direction varies; the mean's whitened direction is left out
    mean = tokens.double().mean((0, 1))
    assert float((mean @ w).abs().max()) < 1e-6 * float((tokens.double()[0] @ w).abs().max())
    within = (tokens.double() - tokens.double().mean(0)).reshape(-1, 24) @ w
    covariance = within.T @ within / (within.shape[0] - 3)
    torch.testing.assert_close(covariance, torch.eye(23, dtype=torch.float64), atol=1e-6, rtol=0)


def test_directions_the_frames_do_not_vary_along_are_left_out():
    tokens = _tokens()
    tokens[..., :10] = 1.0  # ten channels constant across frames
    assert Whitening(tokens).width == 24 - 10 - 1
    with pytest.raises(CromeError, match="do not vary"):
        Whitening(torch.ones(5, 2, 8))
    with pytest.raises(CromeError, match="at least 2 training frames"):
        Whitening(torch.randn(1, 9, 8))


def test_the_pooled_token_sets_the_statistics_where_the_backbone_has_one():
    visual = torch.randn(4, 9, 8)
    assert torch.equal(statistics_tokens(visual, True), visual[:, 8:])
    assert torch.equal(statistics_tokens(visual, False), visual)


def _readout_loss(whiten: bool, steps: int = 60) -> float:
    """A label carried by the tokens' faintest direction, read through the adapter's visual path by AdamW."""
    torch.manual_seed(0)
    tokens = _tokens(n=256, positions=1, d=24, seed=1)
    label = (tokens[:, 0, 0] > tokens[:, 0, 0].median()).float()  # channel 0 has scale 1e-2
    adapter = CromeAdapter(AdapterConfig(d_model=24, rank=8))
    if whiten:
        whiten_visual(adapter, tokens, torch.Generator().manual_seed(0))
    nn.init.normal_(adapter.up, std=0.1)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        z = adapter(tokens, "visual") - tokens
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0].sum(-1), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_whitening_learns_a_faint_direction_that_plain_training_does_not():
    whitened, plain = _readout_loss(True), _readout_loss(False)
    assert whitened < 0.3 < 0.6 < plain  # plain stays near chance (ln 2 = 0.69)


def test_a_whitened_run_saves_a_plain_adapter_whose_visual_matrices_are_whitening_times_v(tmp_path, line3_data,
                                                                                            tiny_backbone):
    trainer = Trainer(_config(line3_data, tmp_path / "w.safetensors", steps=4), backbone=tiny_backbone)
    result = trainer.run()
    assert result.summary["whiten"] is True
    adapter = trainer.stage.adapter
    assert parametrize.is_parametrized(adapter.down, "visual") and parametrize.is_parametrized(adapter.gate, "visual")
    assert not parametrize.is_parametrized(adapter.down, "text")
    saved, _ = load_adapter(tmp_path / "w.safetensors")
    for weights, name in ((saved.down, "down"), (saved.gate, "gate")):
        folded = getattr(adapter, name)["visual"].detach()
        assert weights["visual"].shape == folded.shape == (64, 8)
        torch.testing.assert_close(weights["visual"], folded, rtol=0, atol=0)
    plain = Trainer(_config(line3_data, tmp_path / "p.safetensors", steps=4, whiten=False), backbone=tiny_backbone)
    assert plain.run().summary["whiten"] is False
    other, _ = load_adapter(tmp_path / "p.safetensors")
    assert not torch.allclose(other.down["visual"], saved.down["visual"])
    torch.testing.assert_close(other.down["text"].shape, saved.down["text"].shape)


def test_a_whitened_run_resumes_to_the_same_adapter_and_refuses_an_unwhitened_checkpoint(tmp_path, line3_data,
                                                                                         tiny_backbone):
    Trainer(_config(line3_data, tmp_path / "straight.safetensors", epochs=3), backbone=tiny_backbone).run()
    config = _config(line3_data, tmp_path / "a.safetensors", epochs=3)
    with pytest.raises(TrainingInterrupted):
        Trainer(config, backbone=tiny_backbone, on_step=_interrupt_at(4)).run()
    assert load_checkpoint(config.checkpoint_path)["compat"]["whiten"] is True
    config.resume = True
    Trainer(config, backbone=tiny_backbone).run()
    a, _ = load_adapter(tmp_path / "a.safetensors")
    b, _ = load_adapter(tmp_path / "straight.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)
    with pytest.raises(CromeError, match=r"whiten: checkpoint True, now False"):
        Trainer(_config(line3_data, tmp_path / "a.safetensors", epochs=4, whiten=False, resume=True),
                backbone=tiny_backbone).run()


def test_whiten_needs_the_finetune_stage(tmp_path, line3_data, tiny_backbone):
    with pytest.raises(CromeError, match="--whiten trains the adapter's visual projections; it needs --stage finetune"):
        Trainer(_config(line3_data, tmp_path / "parts.safetensors", stage="pretrain"), backbone=tiny_backbone).run()
