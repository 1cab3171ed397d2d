"""The decoder's weights as GGUF blocks for the runtime's C decode step (crome_runtime.decoder_blocks_file).

Two sources, one check:
  - `from_gguf`: a backbone converted from a GGUF (smol) ships the GGUF's own Q4_1 / Q8_0 blocks byte for byte
    (q/k rows un-permuted to HF's rotate-half order: a row permutation, no value changes). The blocks are
    exact: `check_identity` proves every dequantised matrix equals the PyTorch weight bit for bit.
  - `from_float`: a backbone whose weights are fp32/fp16 (a user's HF checkpoint, tiny) gets a weight-only
    Q8_0 form (the gguf package's bit-exact ggml quantiser). That changes the weights, so its drift is gated
    like any INT8 stage (the fidelity report); `reference_state` gives the PyTorch weights it decodes like.
LLaMA-family decoders only (RMSNorm, rotate-half RoPE, GQA, SwiGLU, no biases). Not here: the C kernels,
the file format (decoder_blocks_file.py), the export gates (pipeline / fidelity).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crome_runtime import gguf_blocks
from crome_runtime.decoder_blocks_file import MATRICES, DecoderBlocks, LlmDims, layer_name
from crome_edge.errors import CromeError

# blocks_file name (after "layers.{i}.") -> HF LlamaDecoderLayer parameter, and GGUF tensor (after "blk.{i}.")
_HF = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
       "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
       "down": "mlp.down_proj.weight", "attn_norm": "input_layernorm.weight",
       "ffn_norm": "post_attention_layernorm.weight"}
_GGUF = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
         "down": "ffn_down", "attn_norm": "attn_norm", "ffn_norm": "ffn_norm"}


def dims_of(llm) -> LlmDims:
    """The C step's dims for a HF LLaMA-family causal LM; CromeError naming what does not fit."""
    c = llm.config
    if c.model_type not in ("llama",):
        raise CromeError(f"the C decode step runs LLaMA-family decoders; this backbone's LLM is {c.model_type!r}")
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}  # transformers 5 / 4.x
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False) or c.hidden_act != "silu" or \
            rope.get("rope_type", "default") != "default":
        raise CromeError("the C decode step needs a bias-free SiLU LLaMA with plain RoPE (no rope scaling); "
                         "this backbone decodes with the ONNX decoder")
    heads = c.num_attention_heads
    return LlmDims(n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=heads,
                   n_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                   head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, d_ff=c.intermediate_size,
                   vocab=llm.get_output_embeddings().weight.shape[0], rms_eps=float(c.rms_norm_eps),
                   rope_theta=float(rope.get("rope_theta") or c.rope_theta))


def _state(llm) -> dict[str, np.ndarray]:
    """blocks_file name -> float32 numpy copy of the PyTorch weight."""
    layers = llm.get_decoder().layers
    params = {}
    for i, layer in enumerate(layers):
        named = dict(layer.named_parameters())
        for part, hf in _HF.items():
            params[layer_name(i, part)] = named[hf]
    params["final_norm"] = llm.get_decoder().norm.weight
    params["head"] = llm.get_output_embeddings().weight
    return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in params.items()}


def _quantize(weight: np.ndarray, qtype: str) -> np.ndarray:
    from gguf.quants import quantize

    import gguf

    return quantize(np.ascontiguousarray(weight, dtype=np.float32), gguf.GGMLQuantizationType[qtype.upper()])


def from_float(llm, qtype: str = "q8_0") -> DecoderBlocks:
    """Weight-only `qtype` blocks of every matrix (head included); norms stay float32."""
    dims, state = dims_of(llm), _state(llm)
    tensors, qtypes = {}, {}
    for name, weight in state.items():
        if weight.ndim == 2:
            tensors[name], qtypes[name] = _quantize(weight, qtype), qtype
        else:
            tensors[name] = np.ascontiguousarray(weight)
    return DecoderBlocks(dims, tensors, qtypes, {"kind": "weight-only", "qtype": qtype})


def _unpermute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved q/k rows -> HF halves (crome_edge.store.gguf_convert.unpermute_rope_rows), on block rows."""
    from crome_edge.store.gguf_convert import unpermute_rope_rows

    return np.ascontiguousarray(unpermute_rope_rows(rows, n_heads))


def from_gguf(gguf_path: Path, llm, gguf_sha256: str | None = None) -> DecoderBlocks:
    """The GGUF's own blocks for every matrix of `llm` (which must be that GGUF converted); checked bit for bit."""
    import gguf

    dims = dims_of(llm)
    reader = gguf.GGUFReader(str(gguf_path))
    found = {t.name: t for t in reader.tensors}
    tensors: dict[str, np.ndarray] = {}
    qtypes: dict[str, str] = {}

    def take(gguf_name: str, name: str, heads: int | None = None) -> None:
        t = found.get(gguf_name)
        if t is None:
            raise CromeError(f"{gguf_path.name} has no tensor {gguf_name}")
        kind = t.tensor_type.name.lower()
        if kind == "f32":
            tensors[name] = np.array(t.data, dtype=np.float32)
            return
        if kind not in gguf_blocks.BLOCK_BYTES:
            raise CromeError(f"{gguf_path.name}: {gguf_name} is {t.tensor_type.name}; the C decode step reads "
                             f"{sorted(gguf_blocks.BLOCK_BYTES)} blocks (export without it: --decoder onnx)")
        data = np.array(t.data, dtype=np.uint8)  # (rows, row_bytes), copied out of the memory map
        tensors[name], qtypes[name] = (_unpermute(data, heads) if heads else data), kind

    for i in range(dims.n_layers):
        for part in (*MATRICES, "attn_norm", "ffn_norm"):
            heads = {"q": dims.n_heads, "k": dims.n_kv_heads}.get(part)
            take(f"blk.{i}.{_GGUF[part]}.weight", layer_name(i, part), heads)
    take("output_norm.weight", "final_norm")
    take("output.weight" if "output.weight" in found else "token_embd.weight", "head")
    source = {"kind": "gguf", "file": Path(gguf_path).name, "tied_head": "output.weight" not in found}
    if gguf_sha256:
        source["sha256"] = gguf_sha256
    blocks = DecoderBlocks(dims, tensors, qtypes, source)
    check_identity(blocks, llm)
    return blocks


def reference_state(blocks: DecoderBlocks) -> dict[str, np.ndarray]:
    """blocks_file name -> the float32 weight the C step decodes with (dequantised blocks, norms as they are)."""
    return {name: blocks.matrix(name) if name in blocks.qtypes else blocks.tensors[name] for name in blocks.tensors}


def check_identity(blocks: DecoderBlocks, llm) -> None:
    """Every dequantised block matrix (and norm) bit-identical to the PyTorch weight; CromeError naming the first not."""
    state = _state(llm)
    for name, weight in reference_state(blocks).items():
        if weight.shape != state[name].shape or not np.array_equal(weight.view(np.uint32), state[name].view(np.uint32)):
            raise CromeError(f"decoder blocks: {name} dequantised is not bit-identical to the PyTorch weight "
                             "(the backbone is not this GGUF converted); export without the C decode path")


def load_reference_into(llm, blocks: DecoderBlocks) -> None:
    """Overwrite `llm`'s weights with what the blocks dequantise to (a test / fidelity reference for Q8_0 forms)."""
    state = reference_state(blocks)
    layers = llm.get_decoder().layers
    with torch.no_grad():
        for i, layer in enumerate(layers):
            named = dict(layer.named_parameters())
            for part, hf in _HF.items():
                named[hf].copy_(torch.from_numpy(state[layer_name(i, part)]))
        llm.get_decoder().norm.weight.copy_(torch.from_numpy(state["final_norm"]))
        head = llm.get_output_embeddings()
        if head.weight is llm.get_input_embeddings().weight:  # tied: untie, the input table stays as it is
            head.weight = torch.nn.Parameter(torch.from_numpy(state["head"].copy()), requires_grad=False)
        else:
            head.weight.copy_(torch.from_numpy(state["head"]))


def source_gguf(backbone) -> Path | None:
    """The GGUF a backbone's LLM was converted from, when crome-edge knows it (the embedded `smol`), else None."""
    if backbone.info.name != "smol":
        return None
    from crome_edge.store.smollm2 import ensure_smollm2_gguf

    return ensure_smollm2_gguf()


DECODER_BLOCKS = ("auto", "q8_0")  # `crome-edge export --decoder-blocks`: the GGUF's own when known; or weight-only Q8_0


def write_bundle_blocks(backbone, directory: Path, say, form: str = "auto", cache=None) -> Path | None:
    """directory/DECODER_BLOCKS_FILE (with `cache`: the cache entry's file, never to be written), or None when the
    backbone gets none (its decode steps then run on the ONNX
    decoder). form "auto": the backbone's exact GGUF blocks (bit-identity checked) when it has a GGUF, else none
    (a weight-only Q8_0 form changes the weights). form "q8_0": a float backbone's weight-only Q8_0 blocks, their
    source marked `"gate": "passed"` provisionally so the export can measure them on the C path; the export
    rewrites the mark (mark_gate) when its gates fail. CromeError when the form does not fit the backbone.
    cache: a crome_export.parts_cache.PartsCache keeping a GGUF's blocks (built and checked once per GGUF sha256,
    backbone fingerprint and the code that builds them), or None."""
    from crome_edge.store.entries import sha256_file
    from crome_runtime import decoder_blocks_file, formats

    if form not in DECODER_BLOCKS:
        raise CromeError(f"--decoder-blocks {form!r} is not one of {', '.join(DECODER_BLOCKS)}")
    gguf_path = source_gguf(backbone)
    path = directory / formats.DECODER_BLOCKS_FILE
    if form == "q8_0":
        if gguf_path is not None:
            raise CromeError(f"--decoder-blocks q8_0: backbone {backbone.info.name} ships its GGUF's own exact blocks "
                             "(the default, --decoder-blocks auto); Q8_0 is for fp16/fp32 backbones")
        dims_of(backbone.llm)  # CromeError naming what the C step cannot run
        blocks = from_float(backbone.llm, "q8_0")
        blocks.source["gate"] = "passed"  # provisional: measured next, rewritten by mark_gate if it fails
        decoder_blocks_file.save(blocks, path)
        say(f"decoder blocks: weight-only Q8_0 of the float weights, {blocks.nbytes / 1e6:.1f} MB "
            "(drift gated like an INT8 stage)")
        return path
    if gguf_path is None:
        return None
    try:
        dims_of(backbone.llm)
    except CromeError as error:
        say(f"decoder blocks: none ({error})")
        return None
    gguf_sha256 = sha256_file(gguf_path)

    def build(target: Path) -> dict:
        blocks = from_gguf(gguf_path, backbone.llm, gguf_sha256)  # CromeError unless bit-identical to the weights
        decoder_blocks_file.save(blocks, target / formats.DECODER_BLOCKS_FILE)
        return {"qtypes": sorted(set(blocks.qtypes.values())), "bytes": blocks.nbytes}

    if cache is None:
        notes = build(directory)
    else:  # the cache's own file: the bundle writer hard-links it (BundleWriter.add_cached)
        built, entry = _cached_blocks(cache, backbone, gguf_sha256, build)
        notes, path = entry["notes"], built / formats.DECODER_BLOCKS_FILE
    say(f"decoder blocks: {gguf_path.name}'s own {'/'.join(notes['qtypes'])} blocks, {notes['bytes'] / 1e6:.0f} MB, "
        "bit-identical to the PyTorch weights dequantised")
    return path


def _cached_blocks(cache, backbone, gguf_sha256: str, build) -> tuple[Path, dict]:
    """A GGUF's blocks from the export cache, keyed on the GGUF's sha256, the backbone's fingerprint (its LLM weights,
    which the blocks were checked bit for bit against) and the code that builds and writes them; built when absent."""
    import hashlib

    from crome_export.parts_cache import parts_key
    from crome_runtime import decoder_blocks_file

    code = hashlib.sha256()
    for module in (__file__, decoder_blocks_file.__file__, gguf_blocks.__file__):
        code.update(Path(module).read_bytes())
    fields = {"fingerprint": backbone.fingerprint(), "precision": "decoder-blocks", "gguf": gguf_sha256,
              "code": code.hexdigest()}
    key = parts_key(fields)
    return cache.lookup(key) or cache.build(key, fields, build)


def is_lowered(path: Path) -> bool:
    """A blocks file whose weights differ from the PyTorch ones (weight-only Q8_0), not a GGUF's own."""
    from crome_runtime import decoder_blocks_file

    return decoder_blocks_file.load(path).source.get("kind") != "gguf"


def mark_gate(path: Path, passed: bool) -> None:
    """Rewrites a lowered blocks file's source mark: "passed" (engine `auto` decodes on it) or "failed"."""
    from crome_runtime import decoder_blocks_file

    blocks = decoder_blocks_file.load(path)
    blocks.source["gate"] = "passed" if passed else "failed"
    decoder_blocks_file.save(blocks, path)
