"""`crome-edge export`: adapter + backbone -> a deployment bundle, in stages, with a fidelity gate.

Stages: check inputs -> load backbone + adapter -> frames -> backbone parts (cached) -> adapter graphs
-> candidate bundle + fidelity -> acceptance set, report, manifest: commit. Fidelity is measured on the
shipped runtime: the bundle writer's staging directory, holding exactly the files to be shipped, is loaded
with crome_runtime's Engine (and, for int8/fp16, a sibling FP32 candidate of hard links with the FP32
graphs); crome_export.fidelity holds them to PyTorch (FP32 parity gate; INT8/FP16 stage and accuracy gates
warn) and builds the acceptance set `crome-edge verify` runs on the device. With --decoder-blocks q8_0 (float
backbones) the shipped files are also measured decoding on their weight-only Q8_0 blocks (C path), gated as
INT8; the blocks stay marked as passed only if those gates pass (_gate_blocks). Every user error is a
CromeError raised before anything is written; a failed gate writes nothing (the staging directory goes).
"""
from __future__ import annotations

import dataclasses

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
    max_new_tokens: int | None = None  # default: longest answer + 2 (crome_edge.evaluate), else formats.DEFAULT_MAX_NEW_TOKENS
    decoder_int8: str = "fp32"  # int8 bundles: the decoder's form (crome_export.quantize.DEFAULT_DECODER_INT8)
    decoder_blocks: str = "auto"  # the C decode step's weights (crome_export.blocks.DECODER_BLOCKS)
    use_cache: bool = True
    cache_dir: Path | None = None  # default: crome_export.parts_cache.cache_root() ($CROME_EDGE_CACHE or the user cache)
    threads: int | None = None  # torch + onnxruntime intra-op threads (default: theirs)
    data: Path | None = None  # the adapter's training data, if it moved (default: the path in its metadata)
    # the questions the adapter answers in the bundle (crome_runtime.adapter_entries.Route); default: its training questions
    # (crome_export.multi.training_route), or every question when those are not known
    route: object | None = None


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
    """Prints `[k/N] stage ... (t s)` lines to stderr; keeps each stage's wall seconds and this process's CPU
    seconds (on a shared machine the CPU seconds say what the stage cost)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.index, self.stream, self.enabled = total, 0, stream or sys.stderr, enabled
        self.started = time.perf_counter()
        self.stage_started = self.started
        self.cpu_started = self.stage_cpu = time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.name = ""

    def stage(self, name: str) -> None:
        self._close()
        self.index += 1
        self.name, self.stage_started, self.stage_cpu = name, time.perf_counter(), time.process_time()
        self._print(f"[{self.index}/{self.total}] {name}")

    def note(self, message: str) -> None:
        self._print(f"      {message}")

    def done(self) -> None:
        self._close()
        self.seconds["total"] = round(time.perf_counter() - self.started, 3)
        self.cpu_seconds["total"] = round(time.process_time() - self.cpu_started, 3)

    def _close(self) -> None:
        if self.name:
            self.seconds[self.name] = round(time.perf_counter() - self.stage_started, 3)
            self.cpu_seconds[self.name] = round(time.process_time() - self.stage_cpu, 3)
            self._print(f"      done in {self.seconds[self.name]:.1f} s ({self.cpu_seconds[self.name]:.1f} CPU s)")
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
    from crome_export.blocks import DECODER_BLOCKS

    if config.decoder_blocks not in DECODER_BLOCKS:
        raise CromeError(f"--decoder-blocks {config.decoder_blocks!r} is not one of {', '.join(DECODER_BLOCKS)}")
    if config.eval_limit < 1:
        raise CromeError("--eval-limit must be at least 1")


def export_bundle(config: ExportConfig, progress: Progress | None = None) -> ExportResult:
    validate(config)
    progress = progress or Progress(7)
    from crome_edge.adapter_file import read_metadata
    from crome_export.bundle import BundleWriter
    from crome_export.frames import parse_calib
    from crome_runtime.adapter_entries import file_name
    from crome_runtime.manifest import bundle_report

    from crome_export.multi import adapter_name

    adapter_path = Path(config.adapter).expanduser().absolute()
    progress.stage("checking the adapter and the output")
    name = adapter_name(adapter_path)  # it prefixes the adapter's files in the bundle
    meta = read_metadata(adapter_path)
    if config.data is not None:
        meta = dataclasses.replace(meta, train_data=str(_jsonl_of(Path(config.data))))
    target = Path(config.out).expanduser() if config.out else default_bundle_path(adapter_path)
    writer = BundleWriter(target, config.force)
    writer.check_target()
    calib = parse_calib(config.calib)
    route = _route(config, name, adapter_path, progress.note)

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
    from crome_export.parts_cache import PartsCache
    from crome_export.backbone_parts import prepare_parts

    feeds = calibration_feeds(data, backbone) if config.precision == "int8" else []
    parts_cache = PartsCache(config.cache_dir, enabled=config.use_cache)  # --no-cache: owns the temporary parts
    parts = prepare_parts(
        backbone, config.precision, feeds, data.calibration_id(), config.opset, config.decoder_int8,
        parts_cache, progress.note,
    )

    with tempfile.TemporaryDirectory(prefix="crome-export-") as work_dir, writer, parts_cache:
        work = Path(work_dir)
        progress.stage("adapter graphs (fused gated projection)")
        from crome_export.adapter_graph import export_adapter_graphs, ort_kernels

        export_adapter_graphs(adapter, work, config.opset)
        kernels = ort_kernels(work / formats.ADAPTER_VISUAL_ONNX)
        progress.note("ONNX Runtime runs the fused projection as: " + ", ".join(kernels["ort_optimized_ops_extended"]))

        progress.stage("candidate bundle: the files, and the engine on them against PyTorch")
        from crome_edge.model import CromeModel

        model = CromeModel(backbone, adapter).eval()
        from crome_export.reuse import Reuse

        reuse = Reuse(config.cache_dir, enabled=config.use_cache)  # results an earlier export measured on these inputs
        max_new_tokens = _generation_budget(model, data, config)
        manifest = _manifest(config, meta, backbone, adapter, adapter_path, parts, _quantization(parts), max_new_tokens,
                             name, route, data.answers)
        from crome_export.blocks import write_bundle_blocks

        # the C decode step's weights: the GGUF's exact blocks, or (--decoder-blocks q8_0) a lowered form
        blocks = write_bundle_blocks(backbone, work, progress.note, config.decoder_blocks, parts_cache)
        lowered = config.decoder_blocks == "q8_0" and blocks is not None
        files = _bundle_files(adapter_path, parts, work, config, name)
        if blocks is not None:
            files.append(BundleFile(blocks, blocks.name, "int8" if lowered else "data",
                                    parts_cache.recorded_sha256(blocks)))
        _add_files(writer, files, parts_cache)
        shipped = "int8" if lowered and config.precision == "fp32" else config.precision  # the pipeline's gates
        decoders = {"fp32": "onnx", shipped: "c"} if lowered else {}  # lowered blocks: parity on ONNX, gates on C
        with tempfile.TemporaryDirectory(prefix=f".{writer.target.name}.fp32-candidate-", dir=writer.target.parent) as ref:
            candidates = {"fp32": writer.candidate(manifest)}  # the files as they will ship
            if config.precision != "fp32":  # the parity reference: the same files with the FP32 graphs
                candidates = {"fp32": _fp32_candidate(Path(ref), writer, parts, manifest, parts_cache),
                              config.precision: candidates["fp32"]}
            elif lowered:  # the same files twice: FP32 parity on the ONNX decoder, the Q8_0 blocks' gates on C
                candidates["int8"] = candidates["fp32"]
            fidelity = _measure(model, data, candidates, manifest, config, progress, decoders, name, reuse)
        report = _report(config, meta, backbone, adapter_path, data, parts, kernels, fidelity, work, max_new_tokens,
                         reuse)
        if lowered and blocks is not None:
            report["decoder_blocks"] = _gate_blocks(blocks, writer, fidelity, shipped, report)
        if not fidelity.fp32_parity:
            _print_table(report)
            raise CromeError("FP32 parity with PyTorch is broken, no bundle written: "
                             + "; ".join(fidelity.gates["fp32_parity"]["why"]))

        progress.stage(f"writing {writer.target}")
        progress.note("acceptance set for `crome-edge verify`: PyTorch's references on held-out frames")
        roles = {formats.ACCEPTANCE_FILE: "acceptance", formats.ACCEPTANCE_ARRAYS: "acceptance_arrays"}
        for plain, blob in _acceptance_files(model, data, manifest, config, report, reuse).items():
            writer.add_bytes(file_name(name, roles[plain]), blob, "data")
        report["timings_s"] = {**progress.seconds, "backbone_parts": parts.seconds}
        report["timings_cpu_s"] = dict(progress.cpu_seconds)
        bundle_json = bundle_report(manifest, {name: report})  # report.json: the adapter's report is its section
        writer.add_bytes(formats.REPORT_FILE, json.dumps(bundle_json, indent=2, sort_keys=True).encode())
        bundle = writer.commit(manifest)
    progress.done()
    _print_table(report)
    for warning in report["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return ExportResult(bundle, report, progress.seconds)


def _load_model(meta, adapter_path: Path, backbone_spec: str | None):
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.registry import load_backbone, load_backbone_named_by

    if backbone_spec:
        backbone = load_backbone(backbone_spec)  # CromeError on unsupported architectures
    else:
        backbone = load_backbone_named_by(f"adapter {adapter_path.name}", meta.backbone_name)
    adapter, _ = load_adapter(adapter_path, backbone)  # AdapterFileError (a CromeError) on a mismatch
    adapter.eval().requires_grad_(False)
    return backbone, adapter


def _generation_budget(model, data, config: ExportConfig) -> int:
    from crome_edge.evaluate import generation_budget

    if config.max_new_tokens:
        return config.max_new_tokens
    return generation_budget(model, data.evaluation, cap=32) if data.has_answers else formats.DEFAULT_MAX_NEW_TOKENS


def _measure(model, data, candidates: dict[str, Path], manifest, config: ExportConfig, progress: Progress,
             decoders: dict[str, str] | None, adapter: str, reuse):
    """The fidelity report, measured on Engines loaded from the candidate bundle directories (precision -> dir),
    each pinned to `adapter` (every prompt measured, whatever its route); decoders: precision -> the engine's
    decoder backend (default: the engine's own choice, "auto")."""
    from contextlib import ExitStack

    from crome_export.fidelity import FidelityConfig, measure
    from crome_runtime.engine import Engine, EngineConfig

    from crome_runtime.shared_sessions import SharedSessions

    engines = {}
    sessions = SharedSessions()  # a graph file both candidates hold (the decoder, an int8 export's) is opened once
    with ExitStack() as pins:
        for precision, directory in candidates.items():
            decoder = (decoders or {}).get(precision, "auto")
            # verify=False: every file of a candidate was hashed once as it was staged (BundleWriter, _fp32_candidate)
            engine_config = EngineConfig(threads=config.threads or 0, decoder=decoder, verify=False)
            engines[precision] = Engine.load(directory, engine_config, sessions=sessions)
            engine = engines[precision]
            pins.enter_context(engine.pin(adapter))
            progress.note(f"{precision} candidate: {engine.adapter_backend} adapter kernel, {engine.decoder_backend} "
                          f"decoder, {engine.providers.summary()}")
        return measure(model, engines, data, FidelityConfig(manifest.generation.max_new_tokens, config.int8_threshold),
                       progress.note, reuse)


def _route(config: ExportConfig, name: str, adapter_path: Path, note):
    """The adapter's route in the bundle: config.route, else the questions it was trained for (as for several
    adapters: other questions go to the frozen backbone), else — no training questions are known — every question,
    said in a note."""
    from crome_export.multi import training_route
    from crome_runtime.adapter_entries import Route

    if config.route is not None:
        return config.route
    try:
        route = training_route(adapter_path, config.data, note)
    except CromeError as error:
        why = str(error)
    else:
        if not route.empty:
            note(f"route: adapter {name} answers the {len(route.questions)} question(s) it was trained for; other "
                 "questions go to the frozen backbone (`crome-edge bundle list` shows them)")
            return route
        why = "it records no training data"
    note(f"route: adapter {name}'s training questions are not known ({why}); it answers every question (export with "
         f"--route {name}=REGEX to route it)")
    return Route.everything()


def _gate_blocks(blocks: Path, writer, fidelity, pipeline: str, report: dict) -> dict:
    """Lowered decoder blocks keep their provisional "passed" mark (engine `auto` decodes on them) only when the
    pipeline that decoded on them passed its decoder stages and its accuracy gate; else they are re-marked
    "failed" (the bundle decodes on ONNX) and the export warns. -> the report's decoder_blocks section."""
    from crome_export.blocks import mark_gate

    stages = [s for s in fidelity.stages if s.precision == pipeline and s.stage.startswith("decoder_")]
    accuracy = fidelity.gates.get(f"{pipeline}_accuracy", {"ok": True})
    why = [f"{s.stage} cosine {s.cosine_min:.6f} < {s.min_cosine}" for s in stages if not s.ok]
    why += accuracy.get("why", []) if not accuracy["ok"] else []
    if not stages:
        why.append("no decoder stage was measured on them")
    passed = not why
    if not passed:
        mark_gate(blocks, False)
        writer.add_file(blocks, blocks.name, "int8")
        report["warnings"].append("decoder blocks (weight-only Q8_0) failed their gates (" + "; ".join(why) +
                                  "): the bundle decodes on the ONNX decoder; export without --decoder-blocks q8_0")
    return {"form": "q8_0", "kind": "weight-only", "pipeline": pipeline, "gate": "passed" if passed else "failed",
            "why": why, "bytes": blocks.stat().st_size}


def _acceptance_files(model, data, manifest, config: ExportConfig, report: dict, reuse) -> dict[str, bytes]:
    """acceptance.json + acceptance.npz (crome_runtime.acceptance); their size and counts go into the report, and
    whether PyTorch's references came from an earlier export into its `reused`."""
    from crome_export.fidelity import FidelityConfig, acceptance_set

    fidelity_config = FidelityConfig(manifest.generation.max_new_tokens, config.int8_threshold)
    chosen = acceptance_set(model, data, manifest.llm.vocab_size, fidelity_config, reuse)
    report.setdefault("reused", {})["acceptance_references"] = reuse.report["acceptance_references"]
    blobs = chosen.to_files(model.backbone.decode)
    report["acceptance"] = {"prompts": len(chosen.references), "frames": len(chosen.frames),
                            "stage_prompts": sum(r.stages is not None for r in chosen.references),
                            "logit_prompts": sum(r.stages is not None and r.stages.prefill_logits is not None
                                                 for r in chosen.references),
                            "bytes": sum(len(b) for b in blobs.values()), "source": chosen.source}
    return blobs


def _report(config, meta, backbone, adapter_path, data, parts, kernels, fidelity, work: Path, max_new_tokens,
            reuse) -> dict:
    from crome_export.trt_check import check_graph
    from crome_runtime.fidelity import report_dict

    from crome_runtime.manifest import sha256_file

    final = parts.final_entry["files"]
    graphs = {formats.VISION_ONNX: parts.final_dir / formats.VISION_ONNX,
              formats.ADAPTER_VISUAL_ONNX: work / formats.ADAPTER_VISUAL_ONNX,
              formats.ADAPTER_TEXT_ONNX: work / formats.ADAPTER_TEXT_ONNX,
              formats.DECODER_ONNX: parts.final_dir / formats.DECODER_ONNX}
    known = {formats.VISION_ONNX: final[formats.VISION_ONNX]["sha256"],  # add_file checked them while copying
             formats.DECODER_ONNX: final[formats.DECODER_ONNX]["sha256"]}
    trt = reuse.graph_checks({name: (path, known.get(name) or sha256_file(path)) for name, path in graphs.items()},
                             lambda path: check_graph(path).to_dict())
    if not trt[formats.DECODER_ONNX]["ok"]:  # e.g. MatMulNBits: check what build-engines will hand TensorRT
        import onnx

        from crome_export.engines import tensorrt_ready_model

        onnx.save(tensorrt_ready_model(graphs[formats.DECODER_ONNX]), str(work / "decoder_tensorrt.onnx"))
        trt[f"{formats.DECODER_ONNX} (as build-engines rewrites it)"] = check_graph(work / "decoder_tensorrt.onnx").to_dict()
    report = report_dict(fidelity, {
        "precision": config.precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone": {"name": backbone.info.name, "fingerprint": backbone.fingerprint()},
        "adapter": {"file": adapter_path.name, "rank": meta.config.rank},
        "inputs": {"calibration": data.calibration_source, "evaluation": data.evaluation_source,
                   "eval_prompts": len(data.evaluation), "max_new_tokens": max_new_tokens},
        "quantization": _quantization(parts),
        "adapter_kernels": kernels,
        "tensorrt_compatibility": trt,
        "backbone_parts_cached": parts.cached,
    })
    report["reused"]["tensorrt_checks"] = reuse.report["tensorrt_checks"]
    return report


@dataclass(frozen=True)
class BundleFile:
    source: Path
    name: str  # inside the bundle
    precision: str  # formats.FILE_PRECISIONS
    sha256: str | None = None  # known from the export cache: checked while copying


def _bundle_files(adapter_path: Path, parts, work: Path, config: ExportConfig, name: str) -> list[BundleFile]:
    """The bundle's files at the exported precision, adapter `name`'s under NAME.<role> (report, acceptance set and
    manifest come last)."""
    from crome_runtime.adapter_entries import file_name

    fp32_files, final_files = parts.fp32_entry["files"], parts.final_entry["files"]
    decoder_precision = "fp32" if config.precision == "int8" and config.decoder_int8 == "fp32" else config.precision
    files = [
        BundleFile(parts.final_dir / formats.VISION_ONNX, formats.VISION_ONNX, config.precision,
                   final_files[formats.VISION_ONNX]["sha256"]),
        BundleFile(work / formats.ADAPTER_VISUAL_ONNX, file_name(name, "adapter_visual"), "fp32"),
        BundleFile(work / formats.ADAPTER_TEXT_ONNX, file_name(name, "adapter_text"), "fp32"),
        BundleFile(adapter_path, file_name(name, "weights"), "fp32"),
        BundleFile(parts.final_dir / formats.DECODER_ONNX, formats.DECODER_ONNX, decoder_precision,
                   final_files[formats.DECODER_ONNX]["sha256"]),
        BundleFile(parts.fp32_dir / formats.EMBEDDINGS_FILE, formats.EMBEDDINGS_FILE, "fp32",
                   fp32_files[formats.EMBEDDINGS_FILE]["sha256"]),
    ]
    files += [BundleFile(parts.fp32_dir / name, name, "data", fp32_files[name]["sha256"])
              for name in (formats.TOKENIZER_FILE, formats.QFORMER_TOKENIZER_FILE) if name in fp32_files]
    return files


@contextmanager
def _discarding_altered(parts_cache) -> Iterator[None]:
    """A file of the export cache found altered (CachedFileAltered) removes its entry, so the next export builds it
    again; the export stops with the error."""
    from crome_export.bundle import CachedFileAltered

    try:
        yield
    except CachedFileAltered as altered:
        parts_cache.discard(altered.source)
        raise


def _add_files(writer, files: list["BundleFile"], parts_cache) -> None:
    """Stages `files`: those of the export cache (sha256 known) hard-linked and hashed, the others copied and hashed.
    A cache file found altered removes its entry (the next export rebuilds it) and stops the export."""
    with _discarding_altered(parts_cache):
        for file in files:
            if file.sha256 is None:
                writer.add_file(file.source, file.name, file.precision)
            else:
                writer.add_cached(file.source, file.name, file.precision, file.sha256)


def _fp32_candidate(directory: Path, writer, parts, manifest, parts_cache) -> Path:
    """A lowered export's parity reference in `directory`: the staged bundle's files with the FP32 graphs in place
    of the lowered ones (hard links where the filesystem allows, else copies) and a manifest listing them. The FP32
    graphs from the export cache are hashed here (the staged files were, as they were staged)."""
    import shutil

    from crome_export.bundle import CachedFileAltered
    from crome_runtime.manifest import FileEntry, sha256_file

    entries = {}
    with _discarding_altered(parts_cache):
        for name, entry in writer.files.items():
            source = writer.staging / name
            if name in (formats.VISION_ONNX, formats.DECODER_ONNX) and entry.precision != "fp32":
                source = parts.fp32_dir / name
                entry = FileEntry(parts.fp32_entry["files"][name]["sha256"], source.stat().st_size, "fp32")
            try:
                os.link(source, directory / name)
            except OSError:  # another filesystem (the export cache), or no hard links there
                shutil.copyfile(source, directory / name)
            if source.parent == parts.fp32_dir and sha256_file(directory / name) != entry.sha256:
                raise CachedFileAltered(source)
            entries[name] = entry
    candidate = dataclasses.replace(manifest, precision="fp32", files=dict(sorted(entries.items())))
    (directory / formats.MANIFEST_FILE).write_text(candidate.to_json())
    return directory


def _manifest(config, meta, backbone, adapter, adapter_path: Path, parts, quantization: dict, max_new_tokens,
              name: str, route, answers: list[str]):
    from crome_export.parts_cache import tool_versions
    from crome_runtime.adapter_entries import AdapterEntry
    from crome_runtime.adapter_versions import utc_now
    from crome_runtime.manifest import GenerationDefaults, LlmSpec, Manifest, sha256_file

    dims = parts.fp32_entry["notes"]["decoder_dims"]
    return Manifest(
        backbone=backbone.spec(),
        llm=LlmSpec(dims["num_layers"], dims["num_kv_heads"], dims["head_dim"], dims["vocab_size"],
                    dims["max_position_embeddings"]),
        adapters=[AdapterEntry(name=name, sha256=sha256_file(adapter_path), rank=adapter.config.rank, route=route,
                               max_new_tokens=max_new_tokens, training=meta.training, answers=answers,
                               added=utc_now())],
        prompt=backbone.info.prompt,
        precision=config.precision,
        files={},
        generation=GenerationDefaults(max_new_tokens=max_new_tokens),
        tools={**tool_versions(), "onnx_opset": str(config.opset), "crome_edge": _version()},
        quantization=quantization,
    )


def _quantization(parts) -> dict:
    notes = parts.final_entry.get("notes", {})
    return {k: notes[k] for k in ("vision", "decoder") if k in notes}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crome-edge")
    except PackageNotFoundError:
        return "unknown"


def _print_table(report: dict) -> None:
    from crome_runtime.fidelity import format_table

    print(format_table(report), file=sys.stderr)
