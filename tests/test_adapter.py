"""CromeAdapter: parameter count, identity at init, fused == unfused."""
import pytest
import torch

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter


def test_parameter_count_matches_paper():
    # docs/architecture.md §2: 5·d·r, the paper's "5.24M trainable parameters" at Vicuna-7B width.
    adapter = CromeAdapter(AdapterConfig(d_model=4096, rank=256))
    assert sum(p.numel() for p in adapter.parameters()) == 5 * 4096 * 256 == 5_242_880


def test_fresh_adapter_is_identity():
    adapter = CromeAdapter(AdapterConfig(d_model=64, rank=8))
    x = torch.randn(2, 5, 64)
    for modality in ("visual", "text"):
        assert torch.equal(adapter(x, modality), x)


@pytest.mark.parametrize("modality", ["visual", "text"])
def test_fused_equals_unfused(modality):
    torch.manual_seed(0)
    adapter = CromeAdapter(AdapterConfig(d_model=96, rank=16))
    torch.nn.init.normal_(adapter.up, std=0.1)  # non-identity
    x = torch.randn(3, 7, 96)
    reference, fused = adapter(x, modality), adapter.forward_fused(x, modality)
    assert not torch.allclose(reference, x)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_modalities_have_separate_down_and_gate_but_share_up():
    adapter = CromeAdapter(AdapterConfig(d_model=32, rank=4))
    names = sorted(name for name, _ in adapter.named_parameters())
    assert names == ["down.text", "down.visual", "gate.text", "gate.visual", "up"]
