"""Files a user hands over are read within limits and refused in one line (issue 21 rows 6, 8, 9 and 15).

- row 8: JSON nested 100,000 deep in a manifest, a report, an adapter's header or metadata, or a dataset line gave a
  RecursionError traceback in `bundle list`, `info`, `run`, `export`, `train`, `eval`; every JSON the project reads
  now goes through crome_runtime.input_files (a test below keeps it so);
- row 9: a format-2 adapter entry with `max_new_tokens: true` or `-5` passed `list`/`info` and tracebacked in `run`;
- row 6: `serve --api-key-file /dev/zero` grew memory without bound, a FIFO hung;
- row 15: a line break in a name split the error line, a 10,000-tensor adapter (a 200 KB header) gave an 89 KB
  error line, `bundle add --adapter DIR` blamed the name, `info` on a FIFO hung.
Commands run in this process (crome_cli.main.main), except where the old behaviour was a hang: those run as a
subprocess with a timeout, so a regression fails instead of stopping the suite.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.bundles import QUESTION, tiny_bundle

from crome_cli.main import main
from crome_runtime import input_files
from crome_runtime.limits import MAX_ADAPTER_NEW_TOKENS, MAX_JSON_DEPTH, MAX_KEY_FILE_BYTES, MAX_LISTED_PROBLEMS
from crome_runtime.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000 + "]" * 100_000
DEPTH_SAID = f"deeper than {MAX_JSON_DEPTH} levels"


def _one_error(capsys, code: int) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]  # progress lines ("[1/7] ...") may precede it
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "export"), str(ROOT / "runtime")])}
    return subprocess.run([sys.executable, "-m", "crome_cli", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def _edited(bundle: Path, target: Path, edit=None, text: str | None = None) -> Path:
    shutil.copytree(bundle, target)
    manifest = target / "manifest.json"
    if text is None:
        data = json.loads(manifest.read_text())
        edit(data)
        text = json.dumps(data)
    manifest.write_text(text)
    return target


# --- row 8: one JSON reader with depth and size limits ------------------------------------------------------------

def test_the_reader_refuses_depth_size_and_non_files_without_recursion_error(tmp_path):
    for text in (DEEP, "{\"a\":" * 5000 + "1" + "}" * 5000, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)):
        with pytest.raises(input_files.JsonInputError, match=DEPTH_SAID):
            input_files.loads(text)
    assert input_files.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(json.JSONDecodeError):  # callers that catch json's own error keep working
        input_files.loads(DEEP)
    with pytest.raises(input_files.InputFileError, match="is a device"):
        input_files.read_json("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(input_files.InputFileError, match="FIFO"):
        input_files.read_json(fifo)
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(input_files.InputFileError, match="over 1,000 bytes"):
        input_files.read_json(big, max_bytes=1000)


def test_every_json_the_project_reads_goes_through_the_one_reader():
    """No json.load/json.loads outside crome_runtime/input_files.py, but for what is not a file: the server's request
    bodies (serve/app.py) and Triton's HTTP answers (triton/client.py)."""
    allowed = {"runtime/crome_runtime/input_files.py", "runtime/crome_runtime/serve/app.py",
               "runtime/crome_runtime/triton/client.py"}
    found = []
    for folder in ("crome_edge", "export", "runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(node.value, ast.Name)
                        and node.value.id == "json"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert [f for f in found if f.split(":")[0] not in allowed] == []


@pytest.mark.parametrize("argv", [["bundle", "list", "{b}"], ["info", "{b}"],
                                  ["run", "--bundle", "{b}", "--image", "{img}", "--prompt", QUESTION, "--threads", "1"]])
def test_a_deeply_nested_manifest_is_one_line_in_every_command(argv, bundle, tmp_path, capsys):
    deep = _edited(bundle, tmp_path / "deep.bundle", text=json.dumps({"format": "x"})[:-1] + ', "tools": ' + DEEP + "}")
    line = _one_error(capsys, main([a.format(b=deep, img=tmp_path / "x.png") for a in argv]))
    assert DEPTH_SAID in line


def test_a_deeply_nested_report_is_refused(bundle, tmp_path):
    from crome_runtime.manifest import BundleError, read_manifest, read_report

    copy = tmp_path / "r.bundle"
    shutil.copytree(bundle, copy)
    (copy / "report.json").write_text(DEEP)
    manifest = read_manifest(copy, verify=False)
    with pytest.raises(BundleError, match=DEPTH_SAID):
        read_report(copy, manifest)


def test_deeply_nested_adapter_header_and_metadata_are_one_line(tmp_path, capsys):
    header = _safetensors(tmp_path / "header.safetensors", ('{"x": ' + DEEP + "}").encode())
    assert DEPTH_SAID in _one_error(capsys, main(["info", str(header)]))
    from crome_runtime.safetensors_header import read_metadata

    shipped = ROOT / "crome_edge" / "weights" / "line3.safetensors"
    raw = shipped.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + length])
    head["__metadata__"] = {**read_metadata(shipped), "training": DEEP}
    meta = _safetensors(tmp_path / "meta.safetensors", json.dumps(head).encode(), raw[8 + length:])
    for argv in (["info", str(meta)], ["export", "--adapter", str(meta), "--out", str(tmp_path / "o.bundle")]):
        assert DEPTH_SAID in _one_error(capsys, main(argv))


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_deeply_nested_dataset_line_is_one_line(command, tmp_path, capsys):
    data = tmp_path / "deep.jsonl"
    data.write_text(DEEP + "\n")
    argv = [command, "--backbone", "tiny", "--data", str(data)]
    if command == "train":
        argv += ["--out", str(tmp_path / "a.safetensors"), "--steps", "1", "--threads", "1"]
    line = _one_error(capsys, main(argv))
    assert "line 1 is not valid JSON" in line and DEPTH_SAID in line


# --- row 9: a format-2 adapter entry's fields ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [True, -5, 0, 1.5, "16", MAX_ADAPTER_NEW_TOKENS + 1])
def test_a_bad_max_new_tokens_is_refused_by_list_info_and_run(value, bundle, tmp_path, capsys):
    def edit(data):
        data["adapters"][0]["max_new_tokens"] = value

    bad = _edited(bundle, tmp_path / "bad.bundle", edit)
    for argv in (["bundle", "list", str(bad)], ["info", str(bad)],
                 ["run", "--bundle", str(bad), "--image", str(tmp_path / "x.png"), "--prompt", QUESTION]):
        line = _one_error(capsys, main(argv))
        assert f"max_new_tokens is {value!r}" in line and f"from 1 to {MAX_ADAPTER_NEW_TOKENS}" in line


# --- row 6: serve --api-key-file ----------------------------------------------------------------------------------

def test_api_key_file_is_read_bounded(tmp_path, capsys):
    from crome_cli import serve

    key = tmp_path / "key.txt"
    key.write_text("s3cret\nignored\n")
    assert serve.read_key_file(key) == "s3cret"
    big = tmp_path / "big.txt"
    big.write_text("k" * (MAX_KEY_FILE_BYTES + 1))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, said in (("/dev/zero", "is a device"), (big, f"over {MAX_KEY_FILE_BYTES:,} bytes"), (fifo, "FIFO"),
                       (tmp_path, "is a directory")):
        result = _run(["serve", "--bundle", str(tmp_path / "nb"), "--camera", "none", "--api-key-file", str(path)],
                      timeout=60)  # a FIFO used to hang here, /dev/zero to eat memory
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and said in lines[0], result.stderr


# --- row 15: messages ---------------------------------------------------------------------------------------------

def test_control_characters_never_split_the_error_line(tmp_path, capsys):
    code = main(["info", str(tmp_path / "b\nc\x1b[31m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err and "b\\nc\\x1b[31m" in err, err


def test_a_version1_adapter_named_with_a_line_break_is_refused(bundle, tmp_path, capsys):
    from tests.support.bundles import as_version1

    v1 = as_version1(bundle, tmp_path / "v1.bundle")
    data = json.loads((v1 / "manifest.json").read_text())
    data["adapter"]["name"] = "b\nc"
    (v1 / "manifest.json").write_text(json.dumps(data))
    line = _one_error(capsys, main(["bundle", "list", str(v1)]))
    assert "'b\\nc' is not usable" in line and "printable" in line


def test_a_10000_tensor_adapter_gets_a_short_line(tmp_path, capsys):
    from crome_runtime.safetensors_header import read_metadata

    shipped = ROOT / "crome_edge" / "weights" / "line3.safetensors"
    header = {f"junk.{i:05d}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(10_000)}
    header["__metadata__"] = read_metadata(shipped)
    text = json.dumps(header).encode()
    assert len(text) > 200_000  # the 200 KB header
    adapter = _safetensors(tmp_path / "many.safetensors", text, b"\0" * 40_000)
    line = _one_error(capsys, main(["info", str(adapter)]))
    assert len(line) < 2000 and "10,000 unexpected" in line and f"and {10_000 - MAX_LISTED_PROBLEMS} more" in line


def test_bundle_add_with_a_directory_as_the_adapter_says_so(bundle, tmp_path, capsys):
    folder = tmp_path / "adapters"
    folder.mkdir()
    line = _one_error(capsys, main(["bundle", "add", str(bundle), "--adapter", str(folder)]))
    assert f"adapter {folder} is a directory" in line and "not usable" not in line


def test_info_on_a_fifo_is_refused_not_a_hang(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result = _run(["info", str(fifo)], timeout=60)
    assert result.returncode == 2 and "is a FIFO (named pipe), not a crome-edge file" in result.stderr, result.stderr
