"""Convert a llama.cpp GGUF file of a LLaMA-family model into a Hugging Face `LlamaForCausalLM` directory.

Reads weights and tokenizer with the `gguf` package, dequantises to fp32 and writes `config.json`,
`generation_config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json`. Needs
neither torch nor transformers (transformers' own `gguf_file=` loader needs `accelerate`).
It is not a general GGUF importer: architecture `llama` with a byte-level BPE (`gpt2`) vocabulary only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crome_edge.errors import CromeError

# GGUF tensor name (per block, after "blk.{i}.") -> HF LlamaForCausalLM parameter (after "model.layers.{i}.")
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# `tokenizer.ggml.pre` values we can rebuild. "smollm" is llama.cpp's name for SmolLM's split: every
# digit alone, then the GPT-2 regex (llama.cpp llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM).
SUPPORTED_PRE_TOKENIZERS = ("smollm",)

CONTROL_TOKEN = 3  # llama.cpp token type of special tokens such as <|im_start|>


@dataclass(frozen=True)
class ConvertedModel:
    """What a conversion produced: the facts `models info` shows and `entry.json` records."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float
    tied_embeddings: bool
    bos_token_id: int
    stop_token_id: int  # <|im_end|>: generation stops here
    gguf_tensor_types: dict[str, int]  # quantisation type name -> number of tensors
    dtype: str = "float32"

    def to_json(self) -> dict:
        return asdict(self)


def _gguf():
    try:
        import gguf
    except ImportError as error:
        raise CromeError("converting a GGUF file needs the `gguf` package: pip install 'crome-edge[train]'") from error
    return gguf


def _metadata(reader) -> dict:
    """Every metadata field except the tensor-info block, as plain Python values."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _f32_value(value: float) -> float:
    """The shortest decimal of a float32 (GGUF stores 1e-5 as 9.999999747e-06)."""
    return float(str(np.float32(value)))


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`) for HF's rotate-half RoPE.

    llama.cpp interleaves each head's rows as pairs (x0, x_half, x1, x_half+1, ...); HF keeps halves.
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads  # (n_heads, 2, head_dim/2) in HF order; GGUF holds (n_heads, head_dim/2, 2)
    return weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")  # suffix "weight"
    if stem.startswith("blk."):
        _, layer, kind = stem.split(".", 2)
        return f"model.layers.{layer}.{_BLOCK_TENSORS[kind]}.{suffix}"
    return f"{_GLOBAL_TENSORS[stem]}.{suffix}"


def _check_supported(meta: dict) -> None:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CromeError(f"GGUF architecture {arch!r} is not supported; only 'llama' (LLaMA, SmolLM2) converts")
    pre = meta.get("tokenizer.ggml.pre")
    if meta.get("tokenizer.ggml.model") != "gpt2" or pre not in SUPPORTED_PRE_TOKENIZERS:
        raise CromeError(
            f"GGUF tokenizer {meta.get('tokenizer.ggml.model')!r}/{pre!r} is not supported; "
            f"only byte-level BPE ('gpt2') with pre-tokenizer {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
        )


def _llama_config(meta: dict, tied: bool, stop_token_id: int) -> dict:
    """config.json with the long-standing keys (rope_theta), which transformers 4.57 and 5.x both read."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": meta["llama.embedding_length"],
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": meta["llama.attention.head_count"],
        "num_key_value_heads": meta["llama.attention.head_count_kv"],
        "head_dim": meta["llama.rope.dimension_count"],
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": _f32_value(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": _f32_value(meta["llama.rope.freq_base"]),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": stop_token_id,
        "pad_token_id": stop_token_id,
        "torch_dtype": "float32",
    }


def build_tokenizer(meta: dict):
    """The SmolLM-style tokenizer the GGUF metadata describes: byte-level BPE, digits split, no BOS added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == CONTROL_TOKEN]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def _tokenizer_config(meta: dict, stop_token: str) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
        "eos_token": stop_token,
        "pad_token": stop_token,
        "unk_token": tokens[meta["tokenizer.ggml.unknown_token_id"]],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["llama.context_length"],
        "chat_template": meta.get("tokenizer.chat_template"),
    }


def convert_gguf(gguf_path: Path, out_dir: Path, *, stop_token: str = "<|im_end|>") -> ConvertedModel:
    """Write a HF LlamaForCausalLM directory for `gguf_path` into the existing, empty `out_dir`."""
    from safetensors.numpy import save_file

    gguf = _gguf()
    reader = gguf.GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    _check_supported(meta)
    tokens = meta["tokenizer.ggml.tokens"]
    if stop_token not in tokens:
        raise CromeError(f"GGUF vocabulary has no {stop_token!r} token to stop generation on")
    stop_token_id = tokens.index(stop_token)
    n_heads, n_kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]

    tensors: dict[str, np.ndarray] = {}
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)  # (out, in) as HF
        if ".attn_q." in tensor.name:
            weight = unpermute_rope_rows(weight, n_heads)
        elif ".attn_k." in tensor.name:
            weight = unpermute_rope_rows(weight, n_kv_heads)
        tensors[_hf_name(tensor.name)] = np.ascontiguousarray(weight)
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    tied = "lm_head.weight" not in tensors  # no `output.weight`: lm_head shares embed_tokens

    config = _llama_config(meta, tied, stop_token_id)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": stop_token_id, "pad_token_id": stop_token_id}
    for name, content in [
        ("config.json", config),
        ("generation_config.json", generation),
        ("tokenizer_config.json", _tokenizer_config(meta, stop_token)),
    ]:
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n")

    return ConvertedModel(
        architecture="LlamaForCausalLM",
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=n_heads,
        num_kv_heads=n_kv_heads,
        rope_theta=config["rope_theta"],
        tied_embeddings=tied,
        bos_token_id=config["bos_token_id"],
        stop_token_id=stop_token_id,
        gguf_tensor_types=types,
    )
