"""`crome-edge export`: adapter + backbone -> a deployment bundle, in stages, with a fidelity gate.

Stages: check inputs -> load backbone + adapter -> frames -> backbone parts (cached) -> adapter graphs
-> fidelity (FP32 parity gate, INT8 accuracy warning) -> write the bundle atomically. Every user error is
a CromeError raised before anything is written; a failed gate writes nothing.
"""
from __future__ import annotations

import dataclasses

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from crome_edge.errors import CromeError
from crome_runtime import formats

MIN_OPSET, MAX_OPSET = 18, 20  # Split(num_outputs) needs 18; the TorchScript exporter stops at 20


@dataclass
class ExportConfig:
    adapter: Path
    backbone: str | None = None  # default: the adapter's metadata
    out: Path | None = None  # default: <adapter stem>.bundle next to the adapter
    precision: str = "int8"
    calib: str | None = None  # N frames of the training split, or a directory of images
    opset: int = formats.DEFAULT_OPSET
    force: bool = False
    int8_threshold: float = 1.0  # accuracy points
    eval_limit: int = 200
    max_new_tokens: int | None = None  # default: longest answer + 2 (crome_edge.evaluate), else 16
    decoder_int8: str = "fp32"  # int8 bundles: the decoder's form (crome_export.quantize.DEFAULT_DECODER_INT8)
    use_cache: bool = True
    cache_dir: Path | None = None  # default: crome_export.cache.cache_root() ($CROME_EDGE_CACHE or the user cache)
    threads: int | None = None  # torch + onnxruntime intra-op threads (default: theirs)
    data: Path | None = None  # the adapter's training data, if it moved (default: the path in its metadata)


@dataclass
class ExportResult:
    bundle: Path
    report: dict
    seconds: dict = field(default_factory=dict)


def _jsonl_of(data: Path) -> Path:
    path = data / "data.jsonl" if data.is_dir() else data
    if not path.is_file():
        raise CromeError(f"--data {data}: no such dataset (a JSONL file, or a directory with data.jsonl)")
    return path.absolute()


class Progress:
    """Prints `[k/N] stage ... (t s)` lines to stderr."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.index, self.stream, self.enabled = total, 0, stream or sys.stderr, enabled
        self.started = time.perf_counter()
        self.stage_started = self.started
        self.seconds: dict[str, float] = {}
        self.name = ""

    def stage(self, name: str) -> None:
        self._close()
        self.index += 1
        self.name, self.stage_started = name, time.perf_counter()
        self._print(f"[{self.index}/{self.total}] {name}")

    def note(self, message: str) -> None:
        self._print(f"      {message}")

    def done(self) -> None:
        self._close()
        self.seconds["total"] = round(time.perf_counter() - self.started, 3)

    def _close(self) -> None:
        if self.name:
            self.seconds[self.name] = round(time.perf_counter() - self.stage_started, 3)
            self._print(f"      done in {self.seconds[self.name]:.1f} s")
            self.name = ""

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


def default_bundle_path(adapter: Path) -> Path:
    return adapter.with_name(adapter.name.removesuffix(".safetensors") + ".bundle")


def validate(config: ExportConfig) -> None:
    if config.precision not in formats.PRECISIONS:
        raise CromeError(f"--precision {config.precision!r} is not one of {', '.join(formats.PRECISIONS)}")
    if not MIN_OPSET <= config.opset <= MAX_OPSET:
        raise CromeError(f"--opset {config.opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    from crome_export.quantize import DECODER_INT8_METHODS

    if config.decoder_int8 not in DECODER_INT8_METHODS:
        raise CromeError(f"--decoder-int8 {config.decoder_int8!r} is not one of {', '.join(DECODER_INT8_METHODS)}")
    if config.eval_limit < 1:
        raise CromeError("--eval-limit must be at least 1")


def export_bundle(config: ExportConfig, progress: Progress | None = None) -> ExportResult:
    validate(config)
    progress = progress or Progress(7)
    from crome_edge.adapter_file import read_metadata
    from crome_export.bundle import BundleWriter
    from crome_export.frames import parse_calib

    adapter_path = Path(config.adapter).expanduser().absolute()
    progress.stage("checking the adapter and the output")
    meta = read_metadata(adapter_path)
    if config.data is not None:
        meta = dataclasses.replace(meta, train_data=str(_jsonl_of(Path(config.data))))
    target = Path(config.out).expanduser() if config.out else default_bundle_path(adapter_path)
    writer = BundleWriter(target, config.force)
    writer.check_target()
    calib = parse_calib(config.calib)

    progress.stage("loading the backbone and the adapter")
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    backbone, adapter = _load_model(meta, adapter_path, config.backbone)
    progress.note(f"backbone {backbone.short_description()}, adapter rank {adapter.config.rank}")

    progress.stage("frames for calibration and fidelity")
    from crome_export.frames import calibration_feeds, load_export_data

    data = load_export_data(meta, backbone.info, calib, config.precision == "int8", config.eval_limit, progress.note)
    progress.note(f"calibration: {data.calibration_source}")
    progress.note(f"fidelity: {data.evaluation_source}")

    progress.stage(f"backbone parts ({config.precision})")
    from crome_export.cache import PartsCache
    from crome_export.parts import prepare_parts

    feeds = calibration_feeds(data, backbone) if config.precision == "int8" else []
    parts = prepare_parts(
        backbone, config.precision, feeds, data.calibration_id(), config.opset, config.decoder_int8,
        PartsCache(config.cache_dir, enabled=config.use_cache), progress.note,
    )

    with tempfile.TemporaryDirectory(prefix="crome-export-") as work_dir, writer:
        work = Path(work_dir)
        progress.stage("adapter graphs (fused gated projection)")
        from crome_export.adapter_graph import export_adapter_graphs, ort_kernels

        export_adapter_graphs(adapter, work, config.opset)
        kernels = ort_kernels(work / formats.ADAPTER_VISUAL_ONNX)
        progress.note("ONNX Runtime runs the fused projection as: " + ", ".join(kernels["ort_optimized_ops_extended"]))

        progress.stage("fidelity against PyTorch")
        fidelity, max_new_tokens = _measure(backbone, adapter, data, parts, work, config, progress)
        report = _report(config, meta, backbone, adapter_path, data, parts, kernels, fidelity, work, max_new_tokens)
        if not fidelity.fp32_parity:
            _print_table(report)
            raise CromeError("FP32 parity with PyTorch is broken, no bundle written: "
                             + "; ".join(fidelity.gates["fp32_parity"]["why"]))

        progress.stage(f"writing {writer.target}")
        decoder_precision = "fp32" if config.precision == "int8" and config.decoder_int8 == "fp32" else config.precision
        _write_files(writer, backbone, adapter_path, parts, work, config.precision, decoder_precision)
        report["timings_s"] = {**progress.seconds, "backbone_parts": parts.seconds}
        writer.add_bytes(formats.REPORT_FILE, json.dumps(report, indent=2, sort_keys=True).encode())
        manifest = _manifest(config, meta, backbone, adapter, adapter_path, parts, report, max_new_tokens)
        bundle = writer.commit(manifest)
    progress.done()
    _print_table(report)
    for warning in report["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return ExportResult(bundle, report, progress.seconds)


def _load_model(meta, adapter_path: Path, backbone_spec: str | None):
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones import load_backbone

    backbone = load_backbone(backbone_spec or meta.backbone_name)  # CromeError on unsupported architectures
    adapter, _ = load_adapter(adapter_path, backbone)  # AdapterFileError (a CromeError) on a mismatch
    adapter.eval().requires_grad_(False)
    return backbone, adapter


def _measure(backbone, adapter, data, parts, work: Path, config: ExportConfig, progress: Progress):
    import numpy as np
    from tokenizers import Tokenizer

    from crome_edge.evaluate import generation_budget
    from crome_edge.model import CromeModel
    from crome_export.fidelity import FidelityConfig, measure
    from crome_export.ort_generate import GraphPaths, OrtPipeline
    from crome_runtime.manifest import LlmSpec

    model = CromeModel(backbone, adapter).eval()
    max_new_tokens = config.max_new_tokens or (
        generation_budget(model, data.evaluation, cap=32) if data.has_answers else 16)
    dims = parts.fp32_entry["notes"]["decoder_dims"]
    llm = LlmSpec(dims["num_layers"], dims["num_kv_heads"], dims["head_dim"], dims["vocab_size"], dims["max_position_embeddings"])
    embeddings = np.load(parts.fp32_dir / formats.EMBEDDINGS_FILE)
    tokenizer = Tokenizer.from_file(str(parts.fp32_dir / formats.TOKENIZER_FILE))
    qformer = parts.fp32_dir / formats.QFORMER_TOKENIZER_FILE
    qformer_tokenizer = Tokenizer.from_file(str(qformer)) if qformer.is_file() else None

    def pipeline(directory: Path) -> OrtPipeline:
        paths = GraphPaths(directory / formats.VISION_ONNX, work / formats.ADAPTER_VISUAL_ONNX,
                           work / formats.ADAPTER_TEXT_ONNX, directory / formats.DECODER_ONNX)
        return OrtPipeline(paths, backbone.info, llm, backbone.info.prompt, embeddings, tokenizer, qformer_tokenizer,
                           config.threads)

    pipelines = {"fp32": pipeline(parts.fp32_dir)}
    if config.precision != "fp32":
        pipelines[config.precision] = pipeline(parts.final_dir)
    fidelity = measure(model, pipelines, data, FidelityConfig(max_new_tokens, config.int8_threshold), progress.note)
    return fidelity, max_new_tokens


def _report(config, meta, backbone, adapter_path, data, parts, kernels, fidelity, work: Path, max_new_tokens) -> dict:
    from crome_export.fidelity import report_dict
    from crome_export.trt_check import check_graph

    graphs = {formats.VISION_ONNX: parts.final_dir / formats.VISION_ONNX,
              formats.ADAPTER_VISUAL_ONNX: work / formats.ADAPTER_VISUAL_ONNX,
              formats.ADAPTER_TEXT_ONNX: work / formats.ADAPTER_TEXT_ONNX,
              formats.DECODER_ONNX: parts.final_dir / formats.DECODER_ONNX}
    notes = parts.final_entry.get("notes", {})
    trt = {name: check_graph(path).to_dict() for name, path in graphs.items()}
    if not trt[formats.DECODER_ONNX]["ok"]:  # e.g. MatMulNBits: check what build-engines will hand TensorRT
        import onnx

        from crome_export.engines import tensorrt_ready_model

        onnx.save(tensorrt_ready_model(graphs[formats.DECODER_ONNX]), str(work / "decoder_tensorrt.onnx"))
        trt[f"{formats.DECODER_ONNX} (as build-engines rewrites it)"] = check_graph(work / "decoder_tensorrt.onnx").to_dict()
    return report_dict(fidelity, {
        "precision": config.precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone": {"name": backbone.info.name, "fingerprint": backbone.fingerprint()},
        "adapter": {"file": adapter_path.name, "rank": meta.config.rank},
        "inputs": {"calibration": data.calibration_source, "evaluation": data.evaluation_source,
                   "eval_prompts": len(data.evaluation), "max_new_tokens": max_new_tokens},
        "quantization": {k: notes[k] for k in ("vision", "decoder") if k in notes},
        "adapter_kernels": kernels,
        "tensorrt_compatibility": trt,
        "backbone_parts_cached": parts.cached,
    })


def _write_files(writer, backbone, adapter_path: Path, parts, work: Path, precision: str, decoder_precision: str) -> None:
    fp32_files, final_files = parts.fp32_entry["files"], parts.final_entry["files"]
    writer.add_file(parts.final_dir / formats.VISION_ONNX, formats.VISION_ONNX, precision,
                    final_files[formats.VISION_ONNX]["sha256"])
    for name in (formats.ADAPTER_VISUAL_ONNX, formats.ADAPTER_TEXT_ONNX):
        writer.add_file(work / name, name, "fp32")
    writer.add_file(adapter_path, formats.ADAPTER_WEIGHTS_FILE, "fp32")
    writer.add_file(parts.final_dir / formats.DECODER_ONNX, formats.DECODER_ONNX, decoder_precision,
                    final_files[formats.DECODER_ONNX]["sha256"])
    writer.add_file(parts.fp32_dir / formats.EMBEDDINGS_FILE, formats.EMBEDDINGS_FILE, "fp32",
                    fp32_files[formats.EMBEDDINGS_FILE]["sha256"])
    for name in (formats.TOKENIZER_FILE, formats.QFORMER_TOKENIZER_FILE):
        if name in fp32_files:
            writer.add_file(parts.fp32_dir / name, name, "data", fp32_files[name]["sha256"])


def _manifest(config, meta, backbone, adapter, adapter_path: Path, parts, report, max_new_tokens):
    from crome_export.cache import tool_versions
    from crome_runtime.manifest import AdapterSpec, GenerationDefaults, LlmSpec, Manifest, sha256_file

    dims = parts.fp32_entry["notes"]["decoder_dims"]
    return Manifest(
        backbone=backbone.spec(),
        llm=LlmSpec(dims["num_layers"], dims["num_kv_heads"], dims["head_dim"], dims["vocab_size"],
                    dims["max_position_embeddings"]),
        adapter=AdapterSpec(name=adapter_path.name.removesuffix(".safetensors"), sha256=sha256_file(adapter_path),
                            rank=adapter.config.rank, training=meta.training),
        prompt=backbone.info.prompt,
        precision=config.precision,
        files={},
        generation=GenerationDefaults(max_new_tokens=max_new_tokens),
        tools={**tool_versions(), "onnx_opset": str(config.opset), "crome_edge": _version()},
        quantization=report["quantization"],
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crome-edge")
    except PackageNotFoundError:
        return "unknown"


def _print_table(report: dict) -> None:
    from crome_export.fidelity import format_table

    print(format_table(report), file=sys.stderr)
