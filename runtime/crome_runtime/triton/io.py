"""The Triton model's inputs and outputs: names, Triton data types and shapes, defined once.

The repository writer puts them into config.pbtxt, the backend reads and writes them, the client sends and
reads them. Shapes exclude the batch dimension (the model has max_batch_size > 0, so every request carries
a leading batch of 1). Generation options are optional typed scalars; absent means the bundle's default
(crome_runtime.engine.GenerationOptions, whose defaults live there).

Not here: the GPU variant's native vision/adapter models, whose inputs are the ONNX graphs' own
(repository.py reads them from the graphs).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_* without the prefix: STRING (BYTES), FP32, INT32, INT64
    dims: tuple[int, ...]
    optional: bool = False
    option: str | None = None  # the GenerationOptions field an optional scalar sets


IMAGE = "IMAGE"  # encoded image bytes (PNG, JPEG, ...): decoded by the runtime's decoder (header checked)
PIXELS = "PIXELS"  # or a preprocessed (3, S, S) float32 frame
PROMPT = "PROMPT"
TEXT, TOKEN_IDS, FINISH_REASON, TIMINGS = "TEXT", "TOKEN_IDS", "FINISH_REASON", "TIMINGS"


def inputs(image_size: int) -> list[Tensor]:
    return [
        Tensor(IMAGE, "STRING", (1,), optional=True),
        Tensor(PIXELS, "FP32", (3, image_size, image_size), optional=True),
        Tensor(PROMPT, "STRING", (1,)),
        Tensor("MAX_NEW_TOKENS", "INT32", (1,), True, "max_new_tokens"),
        Tensor("TEMPERATURE", "FP32", (1,), True, "temperature"),
        Tensor("TOP_K", "INT32", (1,), True, "top_k"),
        Tensor("TOP_P", "FP32", (1,), True, "top_p"),
        Tensor("REPETITION_PENALTY", "FP32", (1,), True, "repetition_penalty"),
        Tensor("SEED", "INT64", (1,), True, "seed"),
        # which adapter answers: a name, or "none" (the frozen backbone); absent: the bundle's routes
        Tensor("ADAPTER", "STRING", (1,), True, "adapter"),
    ]


OUTPUTS = [
    Tensor(TEXT, "STRING", (1,)),  # the answer (decoupled: each response one text piece, the last one empty)
    Tensor(TOKEN_IDS, "INT64", (-1,)),  # generated ids without the stop token (decoupled: on the last response)
    Tensor(FINISH_REASON, "STRING", (1,)),  # stop | length | context ("" until the last response)
    Tensor(TIMINGS, "STRING", (1,)),  # JSON: stage -> ms, ttft_ms, total_ms, prompt_tokens, cache, vision_batch, adapter
]

# numpy dtypes of the Triton types, for the backend and the client
NUMPY = {"STRING": "object", "FP32": "float32", "INT32": "int32", "INT64": "int64"}
WIRE = {"STRING": "BYTES", "FP32": "FP32", "INT32": "INT32", "INT64": "INT64"}  # the KServe v2 datatype names
