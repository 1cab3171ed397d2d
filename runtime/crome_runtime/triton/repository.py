"""A Triton model repository from a bundle (`crome-edge triton-repo BUNDLE OUT`).

variant "python" (runs anywhere tritonserver's python backend runs, e.g. the nvidia-pytriton wheel here):

    OUT/crome/config.pbtxt        python backend, inputs/outputs of io.py, dynamic batching, instance group
    OUT/crome/1/model.py          imports crome_runtime.triton.backend (crome-edge installed in the server's Python)
    OUT/crome/1/bundle/           the bundle's files (hard links where possible; sha256-verified at load)

variant "gpu" (a GPU server with Triton's onnxruntime or tensorrt backend): the vision graph and each
adapter's visual branch become native models with their own dynamic batching on KIND_GPU instances; the
python model keeps the routing, the prompt side and the KV-cache decode loop (onnxruntime-gpu in its Python)
and calls the native models over BLS, one batched request per execute (and one per adapter it routed to):

    OUT/crome_vision/                  onnxruntime_onnx: 1/model.onnx = vision.onnx | tensorrt_plan: 1/model.plan,
    OUT/crome_adapter_visual_NAME/         built on the target (BUILD_TENSORRT.md has the trtexec command)
    OUT/crome/                         as above, parameters vision_model / adapter_visual_models, provider cuda

Every config is rendered through Triton's schema and checked again from disk (pbtxt.py). The repository is
written into a temporary directory beside OUT and renamed into place; OUT must not exist.
Not here: the model code (backend.py), starting the server (server.py).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crome_runtime import formats
from crome_runtime.bundle import load_bundle
from crome_runtime.errors import CromeError
from crome_runtime.triton import io, pbtxt

MODEL = "crome"
VISION_MODEL, ADAPTER_MODEL = "crome_vision", "crome_adapter_visual"  # ADAPTER_MODEL_NAME: one per adapter
VARIANTS = ("python", "gpu")
GPU_BACKENDS = ("onnxruntime", "tensorrt")

MODEL_PY = '''"""crome-edge's python-backend model (written by `crome-edge triton-repo`): the bundle in bundle/ through
crome_runtime's Engine. Needs crome-edge installed in the Python that tritonserver's python backend runs."""
from crome_runtime.triton.backend import TritonPythonModel  # noqa: F401
'''


class RepositoryError(CromeError, ValueError):
    """A repository that cannot be written as asked; the message says what to change."""


@dataclass
class RepositoryConfig:
    variant: str = "python"  # python | gpu
    max_batch_size: int = 16  # requests the dynamic batcher may merge into one execute (one vision batch)
    max_queue_delay_us: int = 2000  # how long a request may wait for others to batch with
    instances: int = 1  # model instances (processes, each its own Engine)
    threads: int = 1  # ONNX Runtime threads per graph in each instance
    decoupled: bool = False  # stream text pieces (Triton's decoupled mode; gRPC stream / HTTP generate_stream)
    gpu_backend: str = "onnxruntime"  # gpu variant: onnxruntime | tensorrt (native vision + adapter models)
    link_bundle: bool = False  # refer to the bundle by absolute path instead of copying it into the repository


def write_repository(bundle: str | os.PathLike, out: str | os.PathLike, config: RepositoryConfig | None = None) -> Path:
    config = config or RepositoryConfig()
    _check(config)
    bundle, out = Path(bundle).resolve(), Path(out)
    loaded = load_bundle(bundle, verify=True)  # BundleError: not a bundle, altered files
    if out.exists():
        raise RepositoryError(f"{out} already exists; give a new directory (the repository is written whole)")
    if not out.parent.is_dir():
        raise RepositoryError(f"{out.parent} does not exist")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        version = work / MODEL / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(MODEL_PY)
        if config.link_bundle:
            bundle_param = str(bundle)
        else:
            _copy_bundle(bundle, loaded.manifest, version / "bundle")
            bundle_param = "bundle"
        native = {}
        if config.variant == "gpu":
            adapters = {entry.name: f"{ADAPTER_MODEL}_{entry.name}" for entry in loaded.manifest.adapters}
            native = {"vision_model": VISION_MODEL, "adapter_visual_models": json.dumps(adapters, sort_keys=True)}
            b = loaded.manifest.backbone
            queries = [b.num_query_tokens, b.d_model]  # what the python model sends and expects (B, Nq, d)
            fixed = {formats.OUT_VISUAL_EMBEDS: queries, formats.IN_ADAPTER_X: queries, formats.OUT_ADAPTER_Y: queries,
                     # the python model pads instruction ids to this width, so every request has one shape
                     formats.IN_INSTRUCTION_IDS: [b.max_instruction_tokens],
                     formats.IN_INSTRUCTION_MASK: [b.max_instruction_tokens]}
            _native_model(work, VISION_MODEL, bundle / formats.VISION_ONNX, config, fixed)
            for entry in loaded.manifest.adapters:
                visual = entry.file("adapter_visual")
                if visual is None:  # a version-1 bundle that lists no adapter weights
                    raise RepositoryError(f"adapter {entry.name!r} of {bundle} has no adapter_visual graph, which the "
                                          "gpu variant runs natively; re-export the bundle or use --variant python")
                _native_model(work, adapters[entry.name], bundle / visual, config, fixed)
        (work / MODEL / "config.pbtxt").write_text(pbtxt.render(python_config(loaded.manifest, config, bundle_param,
                                                                              native)))
        (work / "README.md").write_text(_readme(config))
        pbtxt.check_repository(work, expect_files=config.gpu_backend != "tensorrt" or config.variant != "gpu")
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _check(config: RepositoryConfig) -> None:
    if config.variant not in VARIANTS:
        raise RepositoryError(f"variant {config.variant!r} is not one of {', '.join(VARIANTS)}")
    if config.gpu_backend not in GPU_BACKENDS:
        raise RepositoryError(f"gpu backend {config.gpu_backend!r} is not one of {', '.join(GPU_BACKENDS)}")
    for name, low in (("max_batch_size", 1), ("instances", 1), ("threads", 0), ("max_queue_delay_us", 0)):
        if getattr(config, name) < low:
            raise RepositoryError(f"{name} must be >= {low}, got {getattr(config, name)}")


def _copy_bundle(bundle: Path, manifest, target: Path) -> None:
    """The manifest and every file it lists, hard-linked when on the same filesystem (else copied)."""
    target.mkdir()
    for name in [formats.MANIFEST_FILE, *manifest.files]:
        source = bundle / name
        try:
            os.link(source, target / name)
        except OSError:
            shutil.copy2(source, target / name)


def python_config(manifest, config: RepositoryConfig, bundle_param: str, native: dict) -> dict:
    gpu = config.variant == "gpu"
    params = {"bundle": bundle_param, "threads": str(config.threads), "provider": "cuda" if gpu else "cpu", **native}
    tensor = lambda t: {"name": t.name, "data_type": f"TYPE_{t.data_type}", "dims": list(t.dims),  # noqa: E731
                        **({"optional": True} if t.optional else {})}
    return {
        "name": MODEL, "backend": "python", "max_batch_size": config.max_batch_size,
        "input": [tensor(t) for t in io.inputs(manifest.backbone.image_size)],
        "output": [tensor(t) for t in io.OUTPUTS],
        "dynamic_batching": {"max_queue_delay_microseconds": config.max_queue_delay_us},
        "instance_group": [{"count": config.instances, "kind": "KIND_GPU" if gpu else "KIND_CPU"}],
        "model_transaction_policy": {"decoupled": config.decoupled},
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }


_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
              "tensor(int32)": "TYPE_INT32"}


def graph_io(graph: Path) -> tuple[list[dict], list[dict]]:
    """An ONNX graph's inputs and outputs as Triton tensors: batch axis dropped, named axes -> -1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def tensors(args) -> list[dict]:
        out = []
        for arg in args:
            if arg.type not in _ORT_TYPES:
                raise RepositoryError(f"{graph.name}: {arg.name} has type {arg.type}, which the repository writer "
                                      "does not map")
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[1:]]
            out.append({"name": arg.name, "data_type": _ORT_TYPES[arg.type], "dims": dims})
        return out

    return tensors(session.get_inputs()), tensors(session.get_outputs())


def _native_model(work: Path, name: str, graph: Path, config: RepositoryConfig, fixed: dict) -> None:
    """A native model of one bundle graph; `fixed`: tensor name -> dims replacing the graph's variable axes
    (only where the graph has the same rank and the fixed extent fits it)."""
    inputs, outputs = graph_io(graph)
    for tensor in inputs + outputs:
        dims = fixed.get(tensor["name"])
        if dims is not None and len(dims) == len(tensor["dims"]) and all(
                d == -1 or d == f for d, f in zip(tensor["dims"], dims)):
            tensor["dims"] = list(dims)
    model = {"name": name, "max_batch_size": config.max_batch_size, "input": inputs, "output": outputs,
             "dynamic_batching": {"max_queue_delay_microseconds": config.max_queue_delay_us},
             "instance_group": [{"count": config.instances, "kind": "KIND_GPU"}]}
    version = work / name / "1"
    version.mkdir(parents=True)
    if config.gpu_backend == "onnxruntime":
        model["platform"] = "onnxruntime_onnx"
        shutil.copy2(graph, version / "model.onnx")
    else:
        model["platform"] = "tensorrt_plan"
        (work / name / "BUILD_TENSORRT.md").write_text(_trt_build(name, graph.name, inputs, config.max_batch_size))
    (work / name / "config.pbtxt").write_text(pbtxt.render(model))


def _trt_build(name: str, graph: str, inputs: list[dict], batch: int) -> str:
    def shapes(n: int) -> str:
        return ",".join(f"{t['name']}:" + "x".join(str(d) for d in [n, *t["dims"]]) for t in inputs)

    return (f"# {name}: build the TensorRT engine on the GPU server\n\n"
            "TensorRT engines are specific to the GPU and TensorRT version, so they are built where they run:\n\n"
            f"    trtexec --onnx=BUNDLE/{graph} --saveEngine={name}/1/model.plan \\\n"
            f"        --minShapes={shapes(1)} --optShapes={shapes(max(1, batch // 2))} --maxShapes={shapes(batch)}\n\n"
            "Every axis but the batch is the extent the python model sends (instruction ids are padded to the\n"
            "manifest's backbone.max_instruction_tokens). Add --fp16 for an FP16 engine.\n")


def _readme(config: RepositoryConfig) -> str:
    text = ("# crome-edge Triton model repository\n\n"
            "Written by `crome-edge triton-repo`. Serve it with the tritonserver crome-edge finds (the nvidia-pytriton\n"
            "wheel) or any Triton 2.51+ whose python backend runs a Python with crome-edge installed:\n\n"
            "    crome-edge tritonserver THIS_DIR\n"
            "    tritonserver --model-repository THIS_DIR\n\n"
            "Ask it: `crome-edge client --triton http://127.0.0.1:8000 --camera demo`.\n")
    if config.variant == "gpu":
        text += ("\nGPU variant: crome_vision and each adapter's crome_adapter_visual_NAME run on Triton's "
                 f"{config.gpu_backend} backend (KIND_GPU); crome needs onnxruntime-gpu in the python backend's Python. "
                 "In NVIDIA's container:\n\n"
                 "    docker run --gpus all --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/THIS_DIR:/models \\\n"
                 "        nvcr.io/nvidia/tritonserver:24.10-py3 bash -c \\\n"
                 "        'pip install crome-edge onnxruntime-gpu && tritonserver --model-repository /models'\n")
    return text
