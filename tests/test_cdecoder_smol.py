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


@pytest.mark.parametrize("threads", [1, 2])
def test_smol_blocks_decode_like_fp32_pytorch(smol, threads):
    from crome_runtime.cdecoder import CDecoder

    backbone, llm, blocks = smol
    torch.set_num_threads(1)
    table = np.ascontiguousarray(llm.get_input_embeddings().weight.detach().numpy())
    decoder = CDecoder(blocks, threads=threads)
    for prompt in PROMPTS:
        ids = backbone.info.prompt.prompt_ids(backbone.llm_tokenizer, prompt)
        embeds = np.ascontiguousarray(table[ids][None])  # (1, L, d)
        expected, expected_logits = _torch_greedy(llm, embeds, 32)
        tokens, logits = _c_greedy(decoder, embeds, table, 32)
        assert tokens == expected, prompt
        for a, b in zip(logits, expected_logits):
            cos = float(a.astype(np.float64) @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert cos >= MIN_COSINE, (prompt, cos)
