"""CromeModel on the tiny backbone: KV-cache decoding equals no-cache decoding, batching is exact,
the adapter changes the LLM input only through the prompt, and removing it restores the backbone."""
import torch

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.model import CromeModel, GenerationConfig

QUESTIONS = ["what part is this?", "colour?", "is the part defective, and how?"]


def _no_cache_greedy(model, pixel_values, question, steps):
    prefix = model.build_prefix(pixel_values, [question])
    embeds, out = prefix.embeds, []
    for _ in range(steps):
        token = model.backbone.llm(inputs_embeds=embeds).logits[:, -1].argmax(-1)
        if token.item() in model.backbone.stop_token_ids():
            break
        out.append(token.item())
        embeds = torch.cat([embeds, model.backbone.embed_tokens(token[None])], dim=1)
    return out


def _trained_adapter(d):
    torch.manual_seed(1)
    adapter = CromeAdapter(AdapterConfig(d_model=d, rank=8))
    torch.nn.init.normal_(adapter.up, std=0.3)
    return adapter


@torch.no_grad()
def test_kv_cache_and_batching_match_no_cache_decoding(tiny_backbone):
    model = CromeModel(tiny_backbone, _trained_adapter(tiny_backbone.info.d_model))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batched = model.generate(pixels, QUESTIONS, GenerationConfig(max_new_tokens=10))
    for i, question in enumerate(QUESTIONS):
        single = model.generate(pixels[i : i + 1], [question], GenerationConfig(max_new_tokens=10))[0]
        assert batched[i] == single == _no_cache_greedy(model, pixels[i : i + 1], question, 10)
        assert len(single) > 0


@torch.no_grad()
def test_attach_then_detach_restores_outputs_bit_identically(tiny_backbone):
    model = CromeModel(tiny_backbone)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = model.build_prefix(pixels, QUESTIONS[:2]).embeds.clone()
    tokens_before = model.generate(pixels, QUESTIONS[:2])
    model.attach_adapter(_trained_adapter(tiny_backbone.info.d_model))
    assert not torch.equal(model.build_prefix(pixels, QUESTIONS[:2]).embeds, before)
    model.detach_adapter()
    assert torch.equal(model.build_prefix(pixels, QUESTIONS[:2]).embeds, before)
    assert model.generate(pixels, QUESTIONS[:2]) == tokens_before


def test_loss_is_on_answer_tokens_only(tiny_backbone):
    model = CromeModel(tiny_backbone, _trained_adapter(tiny_backbone.info.d_model))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    loss = model.loss(pixels, ["a?", "b?"], ["x", "y"])
    # Changing the prompt's wording changes the loss (it conditions the answer) ...
    assert not torch.isclose(loss, model.loss(pixels, ["a different question?", "b?"], ["x", "y"]))
    # ... and gradients reach the adapter but never the frozen backbone.
    loss.backward()
    assert model.adapter.up.grad is not None and model.adapter.up.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    model.adapter.zero_grad()


def test_tiny_backbone_is_seeded_and_instruction_aware(tiny_backbone):
    from crome_edge.backbones.tiny import build_tiny

    assert build_tiny(0).fingerprint() == tiny_backbone.fingerprint()
    assert build_tiny(1).fingerprint() != tiny_backbone.fingerprint()
    assert tiny_backbone.info.instruction_aware
    assert sum(p.numel() for p in tiny_backbone.parameters()) * 4 < 1_000_000  # a few hundred KB
    pixels = torch.randn(1, 3, 32, 32)
    model = CromeModel(tiny_backbone)
    with torch.no_grad():
        a = model.visual_embeds(pixels, ["what part is this?"])
        b = model.visual_embeds(pixels, ["what colour is it?"])
    assert a.shape == (1, 4, 64) and not torch.allclose(a, b)  # the Q-Former reads the instruction
