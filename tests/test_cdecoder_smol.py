"""The C decode step on the embedded smol backbone's real GGUF blocks against its fp32 PyTorch decoder (slow).

The blocks are the GGUF's own (crome_export.blocks.from_gguf, which first proves every dequantised matrix
bit-identical to the PyTorch weight); so the C path must give PyTorch's answers: on chat prompts of the
backbone's template, full 32-token greedy sequences identical and every step's logits cosine >= 0.99999,
with the prefix stepped in C and with the ONNX decoder prefilling. (The export's own gates measure the same
path on the report's eval prompts through the engine: bundles of smol carry the blocks.)
"""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
pytest.importorskip("gguf")

PROMPTS = ["Which bin does this part go to?", "Is the part defective?", "What colour is the part?",
           "Describe the scene in one sentence.", "Count from one to ten."]
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def smol():
    from crome_edge.backbones.registry import load_backbone
    from crome_export import blocks

    backbone = load_backbone("smol")
    llm = backbone.llm.eval()
    return backbone, llm, blocks.from_gguf(blocks.source_gguf(backbone), llm)


def _torch_greedy(llm, embeds, n):
    from crome_edge.model import cache_argument

    tokens, logits = [], []
    with torch.no_grad():
        out = llm(inputs_embeds=torch.from_numpy(embeds), use_cache=True)
        for _ in range(n):
            logits.append(out.logits[0, -1].numpy().copy())
            tokens.append(int(logits[-1].argmax()))
            row = llm.get_input_embeddings().weight[tokens[-1]][None, None]
            out = llm(inputs_embeds=row, use_cache=True, **cache_argument(llm, out.past_key_values))
    return tokens, logits


def _c_greedy(decoder, embeds, table, n):
    tokens, logits = [], []
    decoder.reserve(embeds.shape[1] + n)
    out = decoder.prefill(embeds)
    for _ in range(n):
        logits.append(out.copy())
        tokens.append(int(out.argmax()))
        out = decoder.step(table.ctypes.data + tokens[-1] * table.shape[1] * 4)
    return tokens, logits


@pytest.fixture(scope="module")
def pytorch_answers(smol):
    """{prompt: (ids, tokens, logits)} of fp32 PyTorch, computed once for every ISA / thread case."""
    backbone, llm, _ = smol
    torch.set_num_threads(1)
    table = llm.get_input_embeddings().weight.detach().numpy()
    answers = {}
    for prompt in PROMPTS:
        ids = backbone.info.prompt.prompt_ids(backbone.llm_tokenizer, prompt)
        answers[prompt] = (ids, *_torch_greedy(llm, np.ascontiguousarray(table[ids][None]), 32))
    return answers


def _isas():
    """auto (the best path here) and AVX2 where it is not already auto (its repacked layer copy, qblock.h)."""
    from crome_runtime import ccore

    return ["auto"] + (["avx2"] if ccore.isa_supported("avx2") and ccore.isa_best() != "avx2" else [])


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("threads", [1, 2])
def test_smol_blocks_decode_like_fp32_pytorch(smol, pytorch_answers, threads, isa):
    from crome_runtime.cdecoder import CDecoder

    backbone, llm, blocks = smol
    table = np.ascontiguousarray(llm.get_input_embeddings().weight.detach().numpy())
    decoder = CDecoder(blocks, threads=threads, isa=isa)
    for prompt, (ids, expected, expected_logits) in pytorch_answers.items():
        embeds = np.ascontiguousarray(table[ids][None])  # (1, L, d)
        tokens, logits = _c_greedy(decoder, embeds, table, 32)
        assert tokens == expected, prompt
        for a, b in zip(logits, expected_logits):
            cos = float(a.astype(np.float64) @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert cos >= MIN_COSINE, (prompt, cos)


def test_the_blocks_are_built_once_per_gguf_and_backbone_and_a_changed_llm_is_checked_again(smol, tmp_path):
    """write_bundle_blocks keeps the GGUF's blocks in the export cache: the next export copies them byte for byte;
    LLM weights that no longer match the GGUF (another fingerprint) are another key, built and checked again
    (and refused: the blocks are bit-identical to the weights or nothing)."""
    from crome_edge.errors import CromeError
    from crome_export.blocks import write_bundle_blocks
    from crome_export.parts_cache import PartsCache

    backbone, llm, _ = smol
    notes: list[str] = []
    cache = PartsCache(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_bundle_blocks(backbone, tmp_path / "a", notes.append, "auto", cache)
    second = write_bundle_blocks(backbone, tmp_path / "b", notes.append, "auto", cache)
    assert first is not None and second is not None and first.read_bytes() == second.read_bytes()
    assert len(list((tmp_path / "cache" / "export-parts").iterdir())) == 1  # built once
    weight = llm.model.layers[0].mlp.up_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-3)
        backbone.invalidate_fingerprint()
        (tmp_path / "c").mkdir()
        with pytest.raises(CromeError, match="not bit-identical to the PyTorch weight"):
            write_bundle_blocks(backbone, tmp_path / "c", notes.append, "auto", cache)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
        backbone.invalidate_fingerprint()
