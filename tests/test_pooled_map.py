"""The adapter's own map of the backbone's pooled token (gated_adapter.PooledMap): what it computes, its file form, and
the files and flags it refuses."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crome_edge.adapter_file import AdapterFileError, AdapterMetadata, load_adapter, save_adapter
from crome_edge.errors import CromeError
from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from crome_runtime import formats
from tests.support.datasets import synth_dataset

D, R, F = 64, 8, 12


def _fitted(seed=0):
    """An adapter with a PooledMap fitted to 200 tokens t = W·u + b, and (W, b, u, t)."""
    torch.manual_seed(seed)
    adapter = CromeAdapter(AdapterConfig(D, R), pooled_features=F)
    torch.nn.init.normal_(adapter.up, std=0.1)
    weight, bias = torch.randn(D, F), torch.randn(D)
    u = torch.randn(200, F) * torch.logspace(-3, 1, F) + torch.randn(F)  # features of very different spreads
    tokens = u @ weight.T + bias
    adapter.pooled.fit(tokens, weight, bias)
    return adapter, weight, bias, u, tokens


def test_fit_reads_the_features_back_standardised():
    adapter, _, _, u, tokens = _fitted()
    z = tokens.double() @ adapter.pooled.read.double() - adapter.pooled.shift.double()
    expected = (u.double() - u.double().mean(0)) / (u.double().std(0) + 1e-3)
    assert torch.allclose(z, expected, atol=2e-3)  # float32 buffers; the faintest feature (spread 1e-3) is floored


def test_only_the_last_visual_token_moves_and_text_never():
    adapter, *_, tokens = _fitted()
    torch.nn.init.normal_(adapter.pooled.bias, std=0.5)
    x = torch.cat([torch.randn(200, 3, D), tokens[:, None]], 1)
    moved = adapter.pooled(x)
    assert torch.equal(moved[:, :3], x[:, :3]) and not torch.allclose(moved[:, 3], x[:, 3])
    without = CromeAdapter(AdapterConfig(D, R))
    with torch.no_grad():
        for m in ("visual", "text"):
            without.down[m].copy_(adapter.down[m])
            without.gate[m].copy_(adapter.gate[m])
        without.up.copy_(adapter.up)
    assert torch.equal(adapter(x, "text"), without(x, "text"))
    assert torch.allclose(adapter(x, "visual"), without(moved, "visual"))
    assert torch.allclose(adapter.forward_fused(x, "visual"), adapter(x, "visual"), rtol=1e-4, atol=1e-4)


def test_the_file_carries_the_folded_form_and_loads_to_the_same_outputs(tmp_path, tiny_backbone):
    adapter, *_, tokens = _fitted()
    torch.nn.init.normal_(adapter.pooled.bias, std=0.5)
    path = tmp_path / "elpv.safetensors"
    meta = AdapterMetadata(config=adapter.config, backbone_name=tiny_backbone.info.name,
                           backbone_fingerprint=tiny_backbone.fingerprint(), prompt=tiny_backbone.info.prompt,
                           training={"stage": "finetune"}, train_data="/data/elpv")
    save_adapter(path, adapter, meta)
    stored = load_file(str(path))
    assert set(stored) == set(formats.ADAPTER_TENSORS) | set(formats.ADAPTER_POOLED_TENSORS)
    assert stored["visual.pooled.read"].shape == (D, F) and stored["visual.pooled.map"].shape == (F, D)
    loaded, _ = load_adapter(path, tiny_backbone)
    assert loaded.pooled is not None and torch.count_nonzero(loaded.pooled.shift) == 0  # folded into the bias
    x = torch.cat([torch.randn(200, 3, D), tokens[:, None]], 1)
    assert torch.allclose(loaded(x, "visual"), adapter(x, "visual"), atol=1e-4)


def test_partial_or_oversized_pooled_tensors_are_refused(tmp_path, tiny_backbone):
    adapter, *_ = _fitted()
    path = tmp_path / "a.safetensors"
    meta = AdapterMetadata(config=adapter.config, backbone_name=tiny_backbone.info.name,
                           backbone_fingerprint=tiny_backbone.fingerprint(), prompt=tiny_backbone.info.prompt,
                           training={}, train_data="/data")
    save_adapter(path, adapter, meta)
    tensors, strings = load_file(str(path)), meta.to_strings()
    partial = {k: v for k, v in tensors.items() if k != "visual.pooled.bias"}
    save_file(partial, str(tmp_path / "partial.safetensors"), metadata=strings)
    with pytest.raises(AdapterFileError, match="not all of"):
        load_adapter(tmp_path / "partial.safetensors", tiny_backbone)
    huge = dict(tensors, **{"visual.pooled.read": torch.zeros(D, formats.MAX_POOLED_FEATURES + 1)})
    save_file(huge, str(tmp_path / "huge.safetensors"), metadata=strings)
    with pytest.raises(AdapterFileError, match="1 <= F"):
        load_adapter(tmp_path / "huge.safetensors", tiny_backbone)
    mismatched = dict(tensors, **{"visual.pooled.map": torch.zeros(F + 1, D)})
    save_file(mismatched, str(tmp_path / "mismatched.safetensors"), metadata=strings)
    with pytest.raises(AdapterFileError, match="visual.pooled.map has shape"):
        load_adapter(tmp_path / "mismatched.safetensors", tiny_backbone)


def test_pooled_map_needs_a_backbone_with_a_pooled_token_and_finetune(tmp_path):
    data = str(synth_dataset(tmp_path / "data", n=8))
    fast = dict(batch_size=4, rank=8, threads=1, progress=False, backbone="tiny", device="cpu", pooled_map=True)
    with pytest.raises(CromeError, match="has none"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "a.safetensors"), steps=1, **fast)).run()
    with pytest.raises(CromeError, match="needs --stage finetune"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "b.safetensors"), stage="pretrain", steps=1, **fast)).run()
    assert not list(tmp_path.glob("*.safetensors"))


class _MeanPooledToken(torch.nn.Module):
    """A pooled token for tiny (smol's PooledToken in miniature): the mean of the tower's tokens, mapped to d."""

    def __init__(self, channels: int, d_model: int):
        super().__init__()
        self.linear = torch.nn.Linear(channels, d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=1))[:, None]


def test_training_with_a_pooled_map_fits_it_trains_it_and_writes_it(tmp_path):
    """End to end on tiny with a pooled token: `train --pooled-map` fits the map's reading on the training frames
    before the first step, trains the map with the adapter, and writes all three pooled tensors."""
    from crome_edge.backbones.tiny import build_tiny

    backbone = build_tiny(seed=0)
    backbone.pooled_token = _MeanPooledToken(channels=32, d_model=backbone.info.d_model)
    data = str(synth_dataset(tmp_path / "data", n=8))
    out = tmp_path / "a.safetensors"
    config = TrainConfig(data=data, out=str(out), steps=3, batch_size=4, rank=8, threads=1, progress=False,
                         backbone="tiny", device="cpu", pooled_map=True)
    trainer = Trainer(config, backbone=backbone)
    trainer.setup()
    pooled = trainer.stage.adapter.pooled
    assert pooled is not None and torch.count_nonzero(pooled.read) > 0  # fitted before the first step
    start = pooled.map.detach().clone()
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(pooled.map), id(pooled.bias)} <= trained and id(pooled.read) not in trained
    trainer.run()
    assert not torch.equal(pooled.map.detach(), start)
    stored = load_file(str(out))
    assert stored["visual.pooled.read"].shape == (backbone.info.d_model, 32)
    assert stored["visual.pooled.map"].shape == (32, backbone.info.d_model)
    loaded, _ = load_adapter(out, backbone)
    x = torch.randn(2, 5, backbone.info.d_model)
    assert torch.allclose(loaded(x, "visual"), trainer.stage.adapter.cpu()(x, "visual"), atol=1e-5)


def test_the_adapter_graph_and_the_c_kernel_move_the_pooled_token_as_pytorch_does(tmp_path, tiny_backbone):
    """Both runtime backends of an exported adapter with a pooled map answer as CromeAdapter does."""
    import onnxruntime as ort

    from crome_export.adapter_graph import export_adapter_graphs
    from crome_runtime import ccore
    from crome_runtime.adapter_kernel import load_c_adapter

    adapter, *_, tokens = _fitted()
    torch.nn.init.normal_(adapter.pooled.bias, std=0.5)
    x = torch.cat([torch.randn(1, 4, D), tokens[:1, None]], 1)  # (1, Nq, d): one frame's visual queries
    with torch.no_grad():
        want = {m: adapter(x, m)[0].numpy() for m in ("visual", "text")}
    paths = export_adapter_graphs(adapter, tmp_path, opset=17)
    for modality, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {formats.IN_ADAPTER_X: x.numpy()})[0][0]
        assert abs(got - want[modality]).max() < 1e-4 * (1 + abs(want[modality]).max())
    if not ccore.available():
        pytest.skip("the C core is not built")
    path = tmp_path / "elpv.safetensors"
    save_adapter(path, adapter, AdapterMetadata(
        config=adapter.config, backbone_name=tiny_backbone.info.name, backbone_fingerprint=tiny_backbone.fingerprint(),
        prompt=tiny_backbone.info.prompt, training={}, train_data="/data"))
    kernels = load_c_adapter(path, D)
    for modality in ("visual", "text"):
        got = kernels[modality].apply(np.ascontiguousarray(x[0].numpy()))
        assert abs(got - want[modality]).max() < 1e-4 * (1 + abs(want[modality]).max())


def test_the_runtime_refuses_pooled_tensors_that_do_not_fit_the_backbone():
    """The bundle loader checks a pooled map by the same rule as adapter files: all three tensors, 1 <= F <= the bound,
    shapes that fit the backbone's width."""
    from crome_runtime.adapter_kernel import PooledStep
    from crome_runtime.manifest import BundleError

    read, map_, bias = formats.ADAPTER_POOLED_TENSORS
    good = {read: np.zeros((D, F), np.float32), map_: np.zeros((F, D), np.float32), bias: np.zeros(D, np.float32)}
    assert PooledStep.from_tensors({}, D, "a.safetensors") is None
    assert PooledStep.from_tensors(good, D, "a.safetensors").read.shape == (D, F)
    cases = {"not all of": {read: good[read], map_: good[map_]},
             "1 <= F": dict(good, **{read: np.zeros((D, formats.MAX_POOLED_FEATURES + 1), np.float32)}),
             "visual.pooled.map has shape": dict(good, **{map_: np.zeros((F + 1, D), np.float32)}),
             "visual.pooled.bias has shape": dict(good, **{bias: np.zeros(D + 1, np.float32)})}
    for message, tensors in cases.items():
        with pytest.raises(BundleError, match=message):
            PooledStep.from_tensors(tensors, D, "a.safetensors")
    with pytest.raises(BundleError, match="visual.pooled.read has shape"):
        PooledStep.from_tensors(good, D + 1, "a.safetensors")


def test_explain_counts_the_pooled_maps_move_in_the_last_querys_change(tmp_path, tiny_backbone):
    """The heat map's per-query change is ‖adapter(x) − x‖ / ‖x‖ with the pooled map's move included."""
    from crome_runtime.explain import VisualWeights, query_stats

    adapter, *_, tokens = _fitted()
    torch.nn.init.normal_(adapter.pooled.bias, std=0.5)
    path = tmp_path / "elpv.safetensors"
    save_adapter(path, adapter, AdapterMetadata(
        config=adapter.config, backbone_name=tiny_backbone.info.name, backbone_fingerprint=tiny_backbone.fingerprint(),
        prompt=tiny_backbone.info.prompt, training={}, train_data="/data"))
    x = torch.cat([torch.randn(4, D), tokens[:1]], 0)  # (Nq, d): four queries and the pooled token
    with torch.no_grad():
        moved = adapter.pooled(x[None])[0]
        want_change = (adapter(x[None], "visual")[0] - x).norm(dim=1) / x.norm(dim=1)
        want_gate = torch.sigmoid(moved @ adapter.gate["visual"]).mean(dim=1)
    weights = VisualWeights.read(path)
    assert weights.pooled is not None
    change, gate = query_stats(x.numpy(), weights)
    np.testing.assert_allclose(change, want_change.numpy(), rtol=1e-4)
    np.testing.assert_allclose(gate, want_gate.numpy(), rtol=1e-5)
    without, _ = query_stats(x.numpy(), VisualWeights(weights.down, weights.gate, weights.up))
    np.testing.assert_allclose(change[:4], without[:4], rtol=1e-6)  # the queries themselves are not moved
    assert abs(without[4] - want_change[4].item()) > 0.05  # leaving the pooled map out would misreport the last token
