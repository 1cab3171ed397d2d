"""config.pbtxt: written from a dict through Triton's own ModelConfig schema, and checked against it.

The schema is tritonserver 2.51's `model_config.proto` (model_config_schema.py holds its descriptor), loaded
into a private protobuf pool, so no tritonclient (which pins numpy<2) is needed. `render` builds the message
with json_format (an unknown field or a bad enum value is an error, not a silent drop) and prints it in
protobuf text format, which is what Triton reads. `check` parses a config.pbtxt with text_format against the
schema and then applies the structural rules Triton enforces at load that a schema cannot express (below),
so a repository for a backend this machine cannot run (onnxruntime, tensorrt_plan) is still checked here.

Not here: what the configs say (repository.py).
"""
from __future__ import annotations

import base64
import functools
from pathlib import Path

from crome_runtime.errors import CromeError
from crome_runtime.triton import model_config_schema


class ConfigError(CromeError, ValueError):
    """A model configuration Triton would refuse; the message names the model, the field and the rule."""


@functools.lru_cache(maxsize=1)
def model_config_class():
    """The `inference.ModelConfig` message class of Triton 2.51's schema."""
    import hashlib

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

    data = base64.b64decode("".join(model_config_schema.SERIALIZED_B64))
    if hashlib.sha256(data).hexdigest() != model_config_schema.SHA256:
        raise ConfigError("model_config_schema.py is damaged (sha256 mismatch); reinstall crome-edge")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def render(config: dict) -> str:
    """A ModelConfig as a dict (json_format field names, e.g. "max_batch_size", enums as "TYPE_FP32") ->
    config.pbtxt text. ConfigError for anything the schema does not have."""
    from google.protobuf import json_format, text_format  # type: ignore[import-untyped]

    message = model_config_class()()
    try:
        json_format.ParseDict(config, message)
    except json_format.ParseError as error:
        raise ConfigError(f"model {config.get('name', '?')}: {error}") from None
    return text_format.MessageToString(message)


def parse(text: str, where: str = "config.pbtxt"):
    from google.protobuf import text_format  # type: ignore[import-untyped]

    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ConfigError(f"{where}: not a Triton ModelConfig: {error}") from None
    return message


# Backends and platforms, the file each expects in a version directory (Triton's defaults).
DEFAULT_FILES = {"python": "model.py", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
PLATFORM_BACKEND = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}


def check(path: Path, expect_files: bool = True):
    """Parse `path` (a model's config.pbtxt) against the schema, then the load-time rules: name = directory,
    a backend or platform, unique non-empty input/output names with a valid type, dims -1 or > 0,
    dynamic_batching only with max_batch_size > 0, instance counts > 0, decoupled only for python (of ours),
    and (with `expect_files`) a version directory holding the backend's model file. -> the parsed message."""
    path = Path(path)
    message = parse(path.read_text(), str(path))
    model_dir = path.parent
    where = f"{path}"
    if message.name and message.name != model_dir.name:
        raise ConfigError(f"{where}: name {message.name!r} differs from its directory {model_dir.name!r}")
    backend = message.backend or PLATFORM_BACKEND.get(message.platform, "")
    if not backend:
        raise ConfigError(f"{where}: needs a backend (python, onnxruntime, tensorrt) or a platform "
                          f"({', '.join(PLATFORM_BACKEND)}), has backend {message.backend!r} platform {message.platform!r}")
    if message.platform and message.platform not in PLATFORM_BACKEND:
        raise ConfigError(f"{where}: unknown platform {message.platform!r}")
    dtype = message.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    for kind in ("input", "output"):
        seen = set()
        for tensor in getattr(message, kind):
            if not tensor.name or tensor.name in seen:
                raise ConfigError(f"{where}: {kind} name {tensor.name!r} is empty or repeated")
            seen.add(tensor.name)
            if tensor.data_type == dtype.values_by_name["TYPE_INVALID"].number:
                raise ConfigError(f"{where}: {kind} {tensor.name} has no data_type")
            if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
                raise ConfigError(f"{where}: {kind} {tensor.name} dims {list(tensor.dims)} must be non-empty, "
                                  "each -1 (variable) or > 0")
    if message.HasField("dynamic_batching") and message.max_batch_size <= 0:
        raise ConfigError(f"{where}: dynamic_batching needs max_batch_size > 0")
    for size in message.dynamic_batching.preferred_batch_size:
        if not 0 < size <= message.max_batch_size:
            raise ConfigError(f"{where}: preferred_batch_size {size} is outside 1..max_batch_size")
    for group in message.instance_group:
        if group.count < 1:
            raise ConfigError(f"{where}: instance_group count {group.count} must be >= 1")
    if message.model_transaction_policy.decoupled and backend != "python":
        raise ConfigError(f"{where}: decoupled is used only by the python model here")
    if expect_files:
        filename = message.default_model_filename or DEFAULT_FILES.get(backend)
        versions = [d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()]
        if not versions:
            raise ConfigError(f"{model_dir}: no version directory (1/)")
        if filename and not any((v / filename).exists() for v in versions):
            raise ConfigError(f"{model_dir}: no version directory holds {filename}")
    return message


def check_repository(repository: Path, expect_files: bool = True) -> dict:
    """Every model of a repository -> {name: parsed config}; ConfigError on the first problem."""
    repository = Path(repository)
    models = {d.name: check(d / "config.pbtxt", expect_files) for d in sorted(repository.iterdir())
              if (d / "config.pbtxt").is_file()}
    if not models:
        raise ConfigError(f"{repository} holds no model (no */config.pbtxt)")
    return models
