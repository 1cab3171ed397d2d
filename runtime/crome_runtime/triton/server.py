"""Finding and starting `tritonserver`: the binary inside the nvidia-pytriton wheel, run directly.

The PyPI wheel `nvidia-pytriton==0.7.0` carries a real tritonserver 2.51 with the python backend only. We do
not install it (it pins numpy<2 and pulls tritonclient, gevent and grpcio): `fetch_wheel` runs
`pip download --no-deps` into the cache, checks the wheel's sha256 and unpacks only the server, the python
backend and the interpreter stubs. An installed `pytriton` package or a real Triton install (the NGC
container's /opt/tritonserver: `--triton-home` / $CROME_TRITON_HOME) is used instead when present.

Running it: `--backend-directory B` where B/python holds libtriton_python.so, triton_python_backend_utils.py
and the stub built for this interpreter's Python version; LD_LIBRARY_PATH starts with this interpreter's own
LIBDIR (a pyenv Python whose libpython differs from the one the stub finds fails at model load with
"'_thread.RLock' object has no attribute '_recursion_count'") then the wheel's bundled libraries; PATH starts
with this interpreter's bin, so the stub's embedded Python finds the same environment (venv) and imports
crome_runtime. The 2.51 stub's pybind11 misreads numpy 2 arrays (a BYTES input arrives as one byte repeated,
outputs fail "shape does not match size"), and it ignores PYTHONPATH: where this Python has numpy >= 2,
`stub_env` makes a small cached venv with numpy 1.26 that adds this environment's site-packages after its own,
and PATH names it first; the runtime's other dependencies (onnxruntime, OpenCV, tokenizers) import with it. Close clients before stopping: SIGTERM waits for open connections up to --exit-timeout-secs.

Not here: what the repository holds (repository.py), talking to the server (client.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from crome_runtime.cache_entry import ENTRY_FILE, write_entry
from crome_runtime.user_cache_dir import cache_root
from crome_runtime.errors import CromeError

PACKAGE = "nvidia-pytriton"
VERSION = "0.7.0"  # tritonserver 2.51
WHEEL_NAME = "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
SERVER_MEMBERS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")  # what we unpack (~140 MB of the 55 MB wheel)
HOME_ENV = "CROME_TRITON_HOME"


class TritonError(CromeError, RuntimeError):
    """tritonserver cannot be found, fetched or started; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver and its python backend are. `home` has bin/tritonserver and backends/python/."""

    home: Path
    libs: Path | None  # the wheel's bundled shared libraries (nvidia_pytriton.libs), None for a real install
    source: str  # "wheel cache" | "pytriton package" | "$CROME_TRITON_HOME" | "--triton-home"

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    def stub(self) -> Path | None:
        """The python-backend stub for this interpreter (the wheel ships one per Python version)."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.home / "python_backend_stubs" / version / "triton_python_backend_stub"
        return stub if stub.is_file() else None


def locate(home: str | os.PathLike | None = None, fetch: bool = True, say=None) -> TritonInstall:
    """A usable tritonserver: `home` (or $CROME_TRITON_HOME), else an installed pytriton package, else the wheel
    unpacked in the cache (fetched with pip on first use when `fetch`). TritonError when there is none."""
    if home is None and os.environ.get(HOME_ENV):
        home, source = os.environ[HOME_ENV], f"${HOME_ENV}"
    else:
        source = "--triton-home"
    if home is not None:
        install = TritonInstall(Path(home).expanduser(), None, source)
        if not install.binary.is_file():
            raise TritonError(f"{source} {home} has no bin/tritonserver; point it at a Triton install "
                              "(e.g. /opt/tritonserver in NVIDIA's container) or leave it unset to use the "
                              f"{PACKAGE} wheel")
        return install
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        package = Path(spec.origin).parent
        candidate = TritonInstall(package / "tritonserver", package.parent / "nvidia_pytriton.libs",
                                  "pytriton package")
        if candidate.binary.is_file():
            return candidate
    cached = wheel_home()
    if (cached / "bin" / "tritonserver").is_file():
        return TritonInstall(cached, cached.parent.parent / "nvidia_pytriton.libs", "wheel cache")
    if not fetch:
        raise TritonError(f"no tritonserver here: set {HOME_ENV} to a Triton install, or fetch the {PACKAGE} "
                          f"wheel with `crome-edge tritonserver --fetch` (pip download --no-deps {PACKAGE}=={VERSION})")
    fetch_wheel(say=say)
    return TritonInstall(cached, cached.parent.parent / "nvidia_pytriton.libs", "wheel cache")


def cache_dir() -> Path:
    return cache_root() / "tritonserver" / f"{PACKAGE}-{VERSION}"


def wheel_home() -> Path:
    return cache_dir() / "pytriton" / "tritonserver"


def fetch_wheel(wheel: Path | None = None, say=None) -> Path:
    """Unpack the server part of the nvidia-pytriton wheel into the cache (`wheel`: one already downloaded;
    None: `pip download --no-deps`). A cache entry (crome_runtime.cache_entry): a half-unpacked server is never
    left in the cache, two fetches at once both succeed, a killed fetch's build directory is removed later."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    target = cache_dir()

    def build(directory: Path) -> dict:
        download = directory / ".download"  # inside the build dir: removed with it, whatever happens
        source = Path(wheel) if wheel is not None else _download(download, say)
        digest = _sha256(source)
        if digest != WHEEL_SHA256:
            raise TritonError(f"{source} is not the {PACKAGE} {VERSION} wheel (sha256 {digest[:12]}…, expected "
                              f"{WHEEL_SHA256[:12]}…)")
        with zipfile.ZipFile(source) as archive:
            for member in archive.infolist():
                if member.filename.startswith(SERVER_MEMBERS) and not member.is_dir():
                    path = archive.extract(member, directory)
                    if member.filename.endswith(("tritonserver", "triton_python_backend_stub")):
                        os.chmod(path, 0o755)
        shutil.rmtree(download, ignore_errors=True)
        return {"package": PACKAGE, "version": VERSION, "wheel_sha256": digest}

    # `.fetch-*`: the download directories of the fetch that wrote this entry before
    write_entry(target, build, what="tritonserver cache", stale_patterns=(".fetch-*",))
    say(f"tritonserver unpacked into {target}")
    return target


def _download(directory: Path, say) -> Path:
    """`pip download --no-deps` of the wheel into `directory`; TritonError saying what to do when it fails."""
    say(f"downloading {PACKAGE}=={VERSION} (55 MB, tritonserver 2.51) with pip --no-deps")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{PACKAGE}=={VERSION}", "-d", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheel = directory / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        said = [line for line in (done.stderr or "").splitlines() if line.strip()]
        raise TritonError(f"could not download {PACKAGE}=={VERSION}: "
                          f"{said[-1] if said else 'pip found no such wheel'}. On a machine with access "
                          f"run `pip download --no-deps {PACKAGE}=={VERSION}` and pass the wheel with "
                          "`crome-edge tritonserver --fetch --wheel FILE`")
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def backend_directory(install: TritonInstall) -> Path:
    """A --backend-directory whose python/ holds the backend and this interpreter's stub. A real install's
    own backends/ is used as it is; for the wheel we assemble one (links) next to the unpacked server."""
    stub = install.stub()
    if install.libs is None and stub is None:
        return install.home / "backends"
    if stub is None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise TritonError(f"{install.home} has no python-backend stub for Python {version}; the {PACKAGE} "
                          "wheel ships stubs for 3.8-3.13")
    tag = f"py{sys.version_info.major}.{sys.version_info.minor}"
    backends = install.home.parent / f"backends-{tag}"
    python = backends / "python"
    wanted = {"libtriton_python.so": install.home / "backends" / "python" / "libtriton_python.so",
              "triton_python_backend_utils.py": install.home / "backends" / "python" / "triton_python_backend_utils.py",
              "triton_python_backend_stub": stub}
    python.mkdir(parents=True, exist_ok=True)
    for name, path in wanted.items():
        link = python / name
        if link.is_symlink() and link.resolve() == path.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)
    return backends


STUB_NUMPY = "numpy==1.26.4"  # the last numpy 1.x; wheels for Python 3.9-3.12


def stub_env(say=None) -> Path | None:
    """Where this Python's numpy is 2.x: a small venv (cached) holding numpy 1.x whose .pth then adds this
    environment's site-packages, so the stub (which finds its environment as `python3` on PATH) imports numpy
    1.x first and everything else (crome_runtime, onnxruntime, OpenCV) from here. None where numpy is 1.x."""
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return None
    paths = sysconfig.get_paths()
    parents = sorted({paths["purelib"], paths["platlib"]})
    key = hashlib.sha256("\n".join([sys.executable, *parents, STUB_NUMPY]).encode()).hexdigest()[:12]
    tag = f"py{sys.version_info.major}.{sys.version_info.minor}"
    env = cache_root() / "tritonserver" / f"stub-env-{tag}-{key}"
    # `.complete`: the marker of the writer before, also written last before an atomic rename
    if (env / "bin" / "python3").exists() and any((env / name).is_file() for name in (ENTRY_FILE, ".complete")):
        return env
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"preparing tritonserver's python-backend environment {env} ({STUB_NUMPY}: the 2.51 stub's pybind11 "
        "cannot read numpy 2 arrays)")

    def build(work: Path) -> dict:  # a venv may be renamed: its scripts' paths are unused, its python a symlink
        _run([sys.executable, "-m", "venv", "--without-pip", str(work)], "create the stub's venv")
        site = Path(sysconfig.get_path("purelib", vars={"base": str(work), "platbase": str(work)}))
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), STUB_NUMPY],
             f"install {STUB_NUMPY} for the python-backend stub")
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
        (site / "zz_crome_parent_env.pth").write_text(lines)
        return {"numpy": STUB_NUMPY, "python": sys.executable, "site_packages": parents}

    # `.stub-env-*`: the build directories of the writer before
    write_entry(env, build, what="tritonserver cache", stale_patterns=(".stub-env-*",))
    return env


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in (done.stderr or "").splitlines() if line.strip()]
        raise TritonError(f"could not {what}: {said[-1] if said else 'failed'}")


def environment(install: TritonInstall, base: dict | None = None, stub: Path | None = None) -> dict:
    """The server's environment: this interpreter's LIBDIR first; on PATH `stub` (stub_env) or this Python's bin."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [p for p in (libdir, str(install.libs) if install.libs else "", env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    first = stub / "bin" if stub is not None else Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(first), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bound and released: a small race, fine for loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def resolved(self, host: str = "127.0.0.1") -> "Ports":
        """0 -> a free port."""
        return Ports(*(p or free_port(host) for p in (self.http, self.grpc, self.metrics)))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # every endpoint (HTTP, gRPC, metrics) binds here: loopback unless asked
    ports: Ports = field(default_factory=Ports)
    exit_timeout_s: int = 10  # SIGTERM: in-flight requests get this long
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()


def command(install: TritonInstall, repository: Path, config: ServerConfig) -> list[str]:
    p = config.ports
    return [str(install.binary), "--model-repository", str(Path(repository).resolve()),
            "--backend-directory", str(backend_directory(install)),
            "--http-address", config.host, "--http-port", str(p.http),
            "--grpc-address", config.host, "--grpc-port", str(p.grpc),
            "--metrics-address", config.host, "--metrics-port", str(p.metrics),
            "--allow-metrics", "true", "--exit-timeout-secs", str(config.exit_timeout_s),
            "--log-verbose", str(config.log_verbose), *config.extra_args]


class TritonServer:
    """A tritonserver process on `config.ports` (0: free ports) serving `repository`.

        with TritonServer(install, repo, ServerConfig(ports=Ports(0, 0, 0))) as server:
            server.wait_ready(60)
            ... server.url ...
    """

    def __init__(self, install: TritonInstall, repository: str | os.PathLike, config: ServerConfig | None = None,
                 log: Path | None = None):
        self.install, self.repository = install, Path(repository)
        self.config = config or ServerConfig()
        self.config.ports = self.config.ports.resolved(self.config.host)
        self.log_path = log
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ports.metrics}/metrics"

    def start(self) -> "TritonServer":
        if not self.repository.is_dir():
            raise TritonError(f"model repository {self.repository} is not a directory; write one with "
                              "`crome-edge triton-repo BUNDLE OUT`")
        argv = command(self.install, self.repository, self.config)
        env = environment(self.install, stub=stub_env())
        out = open(self.log_path, "ab") if self.log_path else None  # None: this process's stdout/stderr
        try:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                            start_new_session=True)
        finally:
            if out is not None:
                out.close()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from start to ready; TritonError (with the log's tail) when it exits or takes longer."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with status {self.process.returncode} before it was "
                                  f"ready{self._log_tail()}")
            if self.ready():
                self.ready_after_s = time.monotonic() - self.started_at
                return self.ready_after_s
            time.sleep(0.05)
        raise TritonError(f"tritonserver was not ready within {timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "; its log ends:\n" + "\n".join(tail)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then wait (the exit timeout plus a margin); SIGKILL only if it is still there. -> exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s if timeout_s is not None else self.config.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise TritonError(f"tritonserver did not stop within its exit timeout and was killed{self._log_tail()}")

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
