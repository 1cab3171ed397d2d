"""Security defaults, as tests: no pickle anywhere in the project's code (an AST scan of the package sources
and benchmarks: no pickle-family import, every torch.load with weights_only=True, no allow_pickle=True), a
bundle's sha256 checked before any graph reaches ONNX Runtime, serve bound to loopback by default, the API key
compared with hmac.compare_digest (and never with ==), and every request limit present and finite.

Not here: the behaviour of each limit over HTTP (test_serve_api.py, test_serve_http_bad.py) or of the
checkpoint loader on a hostile pickle (test_bad_inputs.py)."""
import ast
import shutil
from pathlib import Path

import onnxruntime
import pytest
from tests.support.bundles import tiny_bundle

from crome_runtime.engine import Engine, EngineConfig
from crome_runtime.manifest import BundleError
from crome_runtime.serve import guard as serve_guard
from crome_runtime.serve.config import LOOPBACK_HOSTS, Limits, ServeConfig
from crome_runtime.serve.server import bind

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["crome_edge", "export/crome_export", "runtime/crome_runtime", "benchmarks"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib", "marshal"}


def _python_files() -> list[Path]:
    files = [p for source in SOURCES for p in sorted((ROOT / source).rglob("*.py"))]
    assert len(files) > 50, "the scan found too few files: the layout changed?"
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _pickle_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{name}(...) without weights_only=True, line {node.lineno}")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{name}(allow_pickle=...) not False, line {node.lineno}")
            if name.endswith("read_pickle") or name.endswith("to_pickle"):
                found.append(f"{name}(...), line {node.lineno}")
    return found


def test_the_scan_finds_what_it_forbids():
    tree = ast.parse("import pickle\nfrom dill import loads\nimport torch\ntorch.load('x')\n"
                     "torch.load('x', weights_only=False)\nimport numpy as np\nnp.load('x', allow_pickle=True)\n"
                     "torch.load('y', map_location='cpu', weights_only=True)\nnp.load('y', allow_pickle=False)\n")
    assert len(_pickle_uses(tree)) == 5


def test_no_pickle_anywhere_in_the_project_code():
    offences = {}
    torch_loads = 0
    for path in _python_files():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        torch_loads += text.count("torch.load(")
        if found := _pickle_uses(tree):
            offences[str(path.relative_to(ROOT))] = found
    assert not offences, offences
    assert torch_loads >= 1  # the checkpoint loader: seen by the scan, and it passes


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def test_a_changed_graph_is_refused_by_sha256_before_onnx_runtime_opens_anything(bundle, tmp_path, monkeypatch):
    damaged = tmp_path / "damaged.bundle"
    shutil.copytree(bundle, damaged)
    vision = damaged / "vision.onnx"
    data = bytearray(vision.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])  # same size, other bytes
    vision.write_bytes(bytes(data))
    opened = []
    real = onnxruntime.InferenceSession

    def spy(path, *args, **kwargs):  # the real session, after noting which file it was asked to open
        opened.append(Path(str(path)).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    with pytest.raises(BundleError) as refused:
        Engine.load(damaged, EngineConfig(threads=1, spin=False))
    message = str(refused.value)
    assert "vision.onnx" in message and "sha256" in message.lower() and "\n" not in message, message
    assert opened == [], f"ONNX Runtime opened {opened} before the bundle was refused"
    Engine.load(bundle, EngineConfig(threads=1, spin=False))  # the spy does not refuse a good bundle by itself
    assert "vision.onnx" in opened


def test_serve_binds_to_loopback_by_default():
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.loopback and config.api_key is None
    sock = bind(config.host, 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    assert not ServeConfig(host="0.0.0.0").loopback and "0.0.0.0" not in LOOPBACK_HOSTS


def test_the_api_key_is_compared_in_constant_time_only():
    tree = ast.parse(Path(serve_guard.__file__).read_text(encoding="utf-8"))
    calls = {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    serve_dir = Path(serve_guard.__file__).parent
    for path in sorted(serve_dir.glob("*.py")) + [ROOT / "export" / "crome_cli" / "serve.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                names = {_dotted(part) for part in [node.left, *node.comparators]}
                assert not any("key" in name.lower() and "digest" not in name for name in names), \
                    f"{path.name}:{node.lineno} compares a key with ==: use hmac.compare_digest"


def test_every_request_limit_is_present_and_finite():
    limits = Limits()
    values = {name: getattr(limits, name) for name in limits.__dataclass_fields__}
    assert set(values) >= {"max_body_bytes", "max_image_pixels", "max_prompt_chars", "max_tokens", "queue_size",
                           "max_watch_prompts", "max_subscribers"}
    for name, value in values.items():
        assert isinstance(value, int) and not isinstance(value, bool) and value > 0, (name, value)
    assert limits.max_body_bytes <= 64 << 20 and limits.max_image_pixels <= 40_000_000  # the 40 MP bound
    assert limits.max_prompt_chars <= 100_000 and limits.max_tokens <= 4096 and limits.queue_size <= 1024
    assert ServeConfig().shutdown_timeout_s > 0 and ServeConfig().keepalive_s > 0
