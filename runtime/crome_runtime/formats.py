"""Names and versions of every artifact crome-edge writes: adapter files, bundles, ONNX graphs.

One module so that the trainer, the exporter, the runtime and the tests agree by construction
(llama.cpp keeps its GGUF keys in one header for the same reason). Torch-free: the runtime imports it.
"""

# --- Adapter file (*.safetensors) -------------------------------------------------------------
ADAPTER_FORMAT = "crome-adapter"
ADAPTER_FORMAT_VERSION = 1

# The five tensors of docs/architecture.md §2: per-modality down (Wd) and gate (Wg) projections, shared up (Wu).
ADAPTER_MODALITIES = ("visual", "text")  # the two inputs a CROME adapter adapts, in this order
# generation cap when nothing measured one (an export measures the longest answer + 2)
DEFAULT_MAX_NEW_TOKENS = 16
ADAPTER_TENSORS = ("visual.down", "visual.gate", "text.down", "text.gate", "up")
# Optional, all three or none: the adapter's own map of the backbone's pooled token (the last visual token t, on
# backbones that have one): t += (t · read) · map + bias, before the gated projection. read (d, F), map (F, d), bias (d,).
ADAPTER_POOLED_TENSORS = ("visual.pooled.read", "visual.pooled.map", "visual.pooled.bias")
MAX_POOLED_FEATURES = 4096  # F: a bound on what an adapter file may ask the runtime to allocate

# String metadata keys (safetensors metadata is str -> str; structured values are JSON strings).
META_FORMAT = "format"
META_FORMAT_VERSION = "format_version"
META_ADAPTER_CONFIG = "adapter_config"  # JSON: {"d_model": int, "rank": int}
META_BACKBONE_NAME = "backbone_name"
META_BACKBONE_FINGERPRINT = "backbone_fingerprint"
META_PROMPT_TEMPLATE = "prompt_template"  # JSON: PromptTemplate fields
META_TRAINING = "training"  # JSON: free-form training summary
META_TRAIN_DATA = "train_data"  # path of the training dataset (JSONL), for calibration at export
# JSON {"recipe": {...}, "sha256": {...}} when the training set is a `crome-edge data synth` set that export can
# regenerate (crome_edge.synth.recipe); absent for a user's own data and in adapters written before it existed.
META_TRAIN_DATA_RECIPE = "train_data_recipe"

# --- Backbone-parts file (*.safetensors): the visual side `train --stage pretrain` writes -------------------
# Tensors `<part>.<name>` (vision, qformer, projection) and `query_tokens`; metadata uses META_FORMAT,
# META_FORMAT_VERSION, META_BACKBONE_NAME and META_TRAINING as above, plus:
PARTS_FORMAT = "crome-backbone-parts"
PARTS_FORMAT_VERSION = 1
META_LLM_FINGERPRINT = "llm_fingerprint"  # sha256 of the frozen LLM's tensors: parts load onto that LLM only
META_BACKBONE_INFO = "backbone_info"  # JSON: the BackboneInfo the parts were trained as

# --- Bundle directory ---------------------------------------------------------------------------
BUNDLE_FORMAT = "crome-bundle"
# what every export writes and the newest this runtime reads: 2 = `adapters` (crome_runtime.adapter_entries); a version-1
# manifest (one adapter under the plain names) is read into the same model by crome_runtime.manifest, only there
BUNDLE_FORMAT_VERSION = 2

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
# The bundle's acceptance set (`crome-edge verify`, crome_runtime.acceptance): prompts and PyTorch's answers,
# and the arrays (uint8 frames, reference stage outputs) as an .npz read with allow_pickle=False.
ACCEPTANCE_FILE = "acceptance.json"
ACCEPTANCE_ARRAYS = "acceptance.npz"
ACCEPTANCE_FORMAT = "crome-acceptance"
ACCEPTANCE_FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
QFORMER_TOKENIZER_FILE = "qformer_tokenizer.json"  # instruction-aware Q-Formers only
EMBEDDINGS_FILE = "embed_tokens.npy"  # (vocab, d) token-embedding table of the frozen LLM
VISION_ONNX = "vision.onnx"
# The adapter is one graph per modality, so the runtime can run the text branch once per prompt (and
# cache it) and the visual branch once per frame. Both are fp32 at every bundle precision (5·d·r params).
# These are the roles' plain names: adapter NAME's files in a bundle are NAME.<plain name> (crome_runtime.adapter_entries).
ADAPTER_VISUAL_ONNX = "adapter_visual.onnx"
ADAPTER_TEXT_ONNX = "adapter_text.onnx"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"  # the adapter's five tensors, for a native fused kernel
DECODER_ONNX = "decoder.onnx"
# The decoder's weights as GGUF Q4_1/Q8_0 blocks + float32 norms, for the C decode step on CPU (decoder_blocks_file.py)
DECODER_BLOCKS_FILE = "decoder_blocks.safetensors"
ENGINES_DIR = "engines"  # TensorRT engines, built on the target by `crome-edge build-engines`
ENGINES_MANIFEST = "engines.json"  # inside ENGINES_DIR: TensorRT version, device, profiles, engine files
TIMING_CACHE_FILE = "timing.cache"  # inside ENGINES_DIR: TensorRT tactic timing cache, reused by rebuilds

PRECISIONS = ("int8", "fp16", "fp32")  # `crome-edge export --precision`
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")  # `crome-edge run --provider` (crome_runtime.providers)
FILE_PRECISIONS = ("fp32", "fp16", "int8", "data")  # manifest FileEntry.precision
DEFAULT_OPSET = 18  # lowest opset the graphs need (Split num_outputs, LayerNormalization)
REPORT_FORMAT = "crome-fidelity-report"
REPORT_FORMAT_VERSION = 1
REPORT_KEPT_VERSIONS = "kept_versions"  # report.json: adapter -> version -> a kept version's fidelity report


def adapter_onnx(modality: str) -> str:
    """"visual" | "text" -> the adapter graph of that branch."""
    return {"visual": ADAPTER_VISUAL_ONNX, "text": ADAPTER_TEXT_ONNX}[modality]

# --- ONNX graph input/output names ----------------------------------------------------------------
# vision.onnx: image (+ instruction when the Q-Former is instruction-aware) -> projected query embeddings
IN_PIXEL_VALUES = "pixel_values"  # (B, 3, H, W) float32, normalised
IN_INSTRUCTION_IDS = "qformer_input_ids"  # (B, L) int64
IN_INSTRUCTION_MASK = "qformer_attention_mask"  # (B, L) int64
OUT_VISUAL_EMBEDS = "visual_embeds"  # (B, Nq, d)
# Optional (`crome-edge run --explain`, docs/explain.md): where each query looks, (B, Nq, gh, gw) over the vision
# tower's patch grid, each query's row summing to <= 1 (the Q-Former's cross-attention, mean over heads and layers;
# a class token's share is left out). Absent from bundles exported before it existed and for towers without a grid.
OUT_QUERY_ATTENTION = "query_attention"

# adapter_visual.onnx / adapter_text.onnx: one branch each, a single FusedGatedProjection node
# y = x + (SiLU(x·Wg) ⊙ (x·Wd))·Wu, computed as one x·[Wd | Wg] GEMM, split, SiLU·mul, then ·Wu + x.
IN_ADAPTER_X = "x"  # (B, N, d) float32
OUT_ADAPTER_Y = "y"  # (B, N, d) float32
ADAPTER_W_DOWN_GATE = "w_down_gate"  # initializer (d, 2r): [Wd | Wg]
ADAPTER_W_UP = "w_up"  # initializer (r, d): Wu

# decoder.onnx: LLM over inputs_embeds with a KV cache; one graph for prefill (P = 0, or any P) and
# decode (S = 1). Rows are left-padded: attention_mask is 0 on padding, position_ids = cumsum(mask) - 1.
IN_INPUTS_EMBEDS = "inputs_embeds"  # (B, S, d) float32
IN_ATTENTION_MASK = "attention_mask"  # (B, P + S) int64
IN_POSITION_IDS = "position_ids"  # (B, S) int64
OUT_LOGITS = "logits"  # (B, 1, vocab) float32: the last position only (all a greedy/sampling step needs)


def past_key_name(layer: int) -> str:
    return f"past_key_values.{layer}.key"  # (B, kv_heads, P, head_dim)


def past_value_name(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key_name(layer: int) -> str:
    return f"present.{layer}.key"  # (B, kv_heads, P + S, head_dim)


def present_value_name(layer: int) -> str:
    return f"present.{layer}.value"


# Custom ONNX domain of the fused gated projection function (export/ writes it, TensorRT plugins match it).
CROME_ONNX_DOMAIN = "ai.crome"
FUSED_GATED_PROJECTION_OP = "FusedGatedProjection"
