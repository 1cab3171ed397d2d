"""Loading a bundle for the runtime: the manifest (sha256 of every file, format version), the tokenizers,
the token-embedding table, and the dimension checks that catch parts put together from different exports.

`load_bundle` checks what can be checked from the files; `check_graphs` checks the ONNX graphs' input and
output shapes (read back from the ONNX Runtime sessions, so no `onnx` package is needed) against the
manifest's dims: an adapter graph exported for another backbone (another width d) is refused with the fix.
Torch-free. Not here: creating sessions (providers.py), running anything (engine.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crome_runtime import formats
from crome_runtime.adapter_kernel import adapter_dims
from crome_runtime.manifest import BundleError, Manifest, bundle_file, read_manifest, read_report
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_metadata

GRAPHS = ("vision", "adapter_visual", "adapter_text", "decoder")
GRAPH_FILES = {"vision": formats.VISION_ONNX, "adapter_visual": formats.ADAPTER_VISUAL_ONNX,
               "adapter_text": formats.ADAPTER_TEXT_ONNX, "decoder": formats.DECODER_ONNX}


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    tokenizer: object  # tokenizers.Tokenizer of the LLM
    qformer_tokenizer: object | None  # instruction-aware Q-Formers only
    embeddings: np.ndarray  # (vocab, d) float32, memory-mapped read-only
    stop_ids: frozenset[int]
    report: dict | None = None  # report.json (manifest.read_report's one shape)
    notes: list[str] = field(default_factory=list)

    def graph_path(self, graph: str) -> Path:
        return self.path / GRAPH_FILES[graph]

    @property
    def name(self) -> str:
        adapters = "+".join(self.manifest.adapter_names) or "no adapter"
        return f"{self.manifest.backbone.name}/{adapters} ({self.manifest.precision})"

    def adapter_file(self, adapter: str, role: str) -> Path | None:
        """The path of adapter `adapter`'s file of `role` (crome_runtime.adapter_entries.ROLES) in this bundle, or None when
        the adapter has no such file."""
        name = self.manifest.entry(adapter).file(role)
        return None if name is None else self.path / name


@dataclass(frozen=True)
class GraphSignature:
    """Input and output shapes of one graph; a dim is an int when static, a str or None when dynamic."""

    inputs: dict[str, tuple]
    outputs: dict[str, tuple]

    @classmethod
    def of_session(cls, session) -> "GraphSignature":
        return cls({i.name: tuple(i.shape) for i in session.get_inputs()},
                   {o.name: tuple(o.shape) for o in session.get_outputs()})


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Reads and checks a bundle directory; raises BundleError naming the file and the fix."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory; export one with `crome-edge export --adapter ADAPTER`")
    manifest = read_manifest(path, verify=verify)  # sha256 of every listed file; format version
    required = [formats.VISION_ONNX, formats.DECODER_ONNX, formats.EMBEDDINGS_FILE, formats.TOKENIZER_FILE]
    required += _adapter_files(manifest)
    if manifest.backbone.instruction_aware:
        required.append(formats.QFORMER_TOKENIZER_FILE)
    for name in required:
        if name not in manifest.files:
            raise BundleError(f"bundle {path} lists no {name} in its manifest; it is incomplete — re-export it")
        bundle_file(path, name)  # BundleError: missing, a symbolic link, or not a regular file
    tokenizer = _tokenizer(path / formats.TOKENIZER_FILE)
    qformer = _tokenizer(path / formats.QFORMER_TOKENIZER_FILE) if manifest.backbone.instruction_aware else None
    embeddings = _embeddings(path / formats.EMBEDDINGS_FILE, manifest)
    if tokenizer.get_vocab_size(with_added_tokens=True) > manifest.llm.vocab_size:
        raise BundleError(
            f"{formats.TOKENIZER_FILE} has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens but the decoder's "
            f"vocabulary is {manifest.llm.vocab_size}: the tokenizer comes from another model; re-export the bundle"
        )
    stop_ids = manifest.prompt.stop_ids(tokenizer)
    notes = []
    if manifest.prompt.stop_tokens and not stop_ids:
        notes.append(f"none of the prompt template's stop tokens {list(manifest.prompt.stop_tokens)} is a token of "
                     "the tokenizer: answers run to max_new_tokens")
    for adapter in manifest.adapter_names:
        _check_adapter_file(path, manifest, adapter)
    report = read_report(path, manifest)
    return Bundle(path, manifest, tokenizer, qformer, embeddings, stop_ids, report, notes)


def _tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises its own Exception type for malformed files
        raise BundleError(f"{path.name} in {path.parent} is not a readable tokenizer ({error}); re-export the bundle") from None


def _embeddings(path: Path, manifest: Manifest) -> np.ndarray:
    try:
        table = np.load(path, mmap_mode="r")  # (vocab, d): rows are gathered, never copied whole
    except (ValueError, OSError) as error:
        raise BundleError(f"{path.name} in {path.parent} is not a readable .npy table ({error}); re-export the bundle") from None
    expected = (manifest.llm.vocab_size, manifest.backbone.d_model)
    if table.dtype != np.float32 or table.shape != expected or not table.flags.c_contiguous:
        raise BundleError(
            f"{path.name} is {table.dtype} {table.shape}, the manifest says float32 {expected} "
            f"(vocab_size, d_model): it comes from another backbone; re-export the bundle"
        )
    return table


def _adapter_files(manifest: Manifest) -> list[str]:
    """The files every adapter needs: its two graphs, and its weights (a version-1 bundle's adapter may lack them)."""
    from crome_runtime.adapter_entries import REQUIRED_ROLES

    return [name for entry in manifest.adapters for role in REQUIRED_ROLES if (name := entry.file(role)) is not None]


def _check_adapter_file(path: Path, manifest: Manifest, adapter: str) -> None:
    """An adapter's .safetensors (when the bundle has it): its metadata must name this bundle's backbone."""
    name = manifest.entry(adapter).file("weights")
    if name is None or name not in manifest.files:
        return
    file = bundle_file(path, name)
    try:
        meta = read_metadata(file)
    except SafetensorsHeaderError as error:
        raise BundleError(f"{name} in {path} is not a readable safetensors file ({error}); "
                          "re-export the bundle") from None
    if meta.get(formats.META_FORMAT) != formats.ADAPTER_FORMAT:
        raise BundleError(f"{name} in {path} is not a crome-edge adapter file; re-export the bundle")
    try:
        d = adapter_dims(meta.get(formats.META_ADAPTER_CONFIG, ""))[0]
    except ValueError as error:
        raise BundleError(f"{name} in {path}: {error}; re-export the bundle") from None
    fingerprint = meta.get(formats.META_BACKBONE_FINGERPRINT, "")
    backbone = manifest.backbone
    if d != backbone.d_model or fingerprint != backbone.fingerprint:
        raise BundleError(
            f"{name}: the bundle's adapter was trained for backbone {meta.get(formats.META_BACKBONE_NAME, '?')} (d={d}, "
            f"fingerprint {fingerprint[:12]}…) but its backbone is {backbone.name} (d={backbone.d_model}, fingerprint "
            f"{backbone.fingerprint[:12]}…). Re-export with `crome-edge export --adapter ADAPTER --backbone "
            f"{backbone.name}` using an adapter trained on {backbone.name}"
        )


# --- graph dims ---------------------------------------------------------------------------------------


def check_graphs(bundle: Bundle, signatures: dict[str, GraphSignature], files: dict[str, str] | None = None) -> None:
    """Every graph's static dims against the manifest; BundleError naming the graph, the dim and the fix.
    signatures: graph (GRAPHS) -> its signature; files: graph -> its file name where it is not GRAPH_FILES'
    (an adapter's graphs, crome_runtime.adapter_entries)."""
    m = bundle.manifest
    names = {**GRAPH_FILES, **(files or {})}
    d, nq, size = m.backbone.d_model, m.backbone.num_query_tokens, m.backbone.image_size
    reexport = "re-export the bundle with `crome-edge export` so that all its parts come from one backbone"
    problems: list[str] = []

    def expect(graph: str, kind: str, name: str, shape: tuple) -> None:
        sig = signatures[graph]
        table = sig.inputs if kind == "input" else sig.outputs
        if name not in table:
            problems.append(f"{names[graph]} has no {kind} {name!r} (it has {sorted(table)})")
            return
        got = table[name]
        if len(got) != len(shape):
            problems.append(f"{names[graph]} {kind} {name} has rank {len(got)}, expected {len(shape)}")
            return
        for axis, (want, have) in enumerate(zip(shape, got)):
            if want is not None and isinstance(have, int) and have != want:
                problems.append(f"{names[graph]} {kind} {name} has {have} on axis {axis}, expected {want}")

    for graph in ("adapter_visual", "adapter_text"):
        if graph not in signatures:  # a bundle without adapters (the frozen backbone alone)
            continue
        width = _static(signatures[graph].inputs.get(formats.IN_ADAPTER_X), 2)
        if width is not None and width != d:
            raise BundleError(
                f"{names[graph]} works on width d={width} but this bundle's backbone {m.backbone.name} has "
                f"d_model={d}: the adapter graph was exported for another backbone. Re-export with `crome-edge export "
                f"--adapter ADAPTER` using an adapter trained on {m.backbone.name}"
            )
        expect(graph, "input", formats.IN_ADAPTER_X, (None, None, d))
        expect(graph, "output", formats.OUT_ADAPTER_Y, (None, None, d))
    expect("vision", "input", formats.IN_PIXEL_VALUES, (None, 3, size, size))
    expect("vision", "output", formats.OUT_VISUAL_EMBEDS, (None, nq, d))
    has_instruction = formats.IN_INSTRUCTION_IDS in signatures["vision"].inputs
    if has_instruction != m.backbone.instruction_aware:
        problems.append(f"{formats.VISION_ONNX} {'takes' if has_instruction else 'does not take'} an instruction but "
                        f"the manifest says instruction_aware={m.backbone.instruction_aware}")
    expect("decoder", "input", formats.IN_INPUTS_EMBEDS, (None, None, d))
    expect("decoder", "output", formats.OUT_LOGITS, (None, None, m.llm.vocab_size))
    layers = sum(1 for name in signatures["decoder"].inputs if name.startswith("past_key_values.") and name.endswith(".key"))
    if layers != m.llm.num_layers:
        problems.append(f"{formats.DECODER_ONNX} has a KV cache for {layers} layers, the manifest says {m.llm.num_layers}")
    for i in range(min(layers, m.llm.num_layers)):
        for name in (formats.past_key_name(i), formats.past_value_name(i)):
            expect("decoder", "input", name, (None, m.llm.num_kv_heads, None, m.llm.head_dim))
    if problems:
        raise BundleError(f"bundle {bundle.path} does not fit together: " + "; ".join(problems) + f". Fix: {reexport}")


def _static(shape: tuple | None, axis: int) -> int | None:
    if shape is None or len(shape) <= axis or not isinstance(shape[axis], int):
        return None
    return shape[axis]
