"""Every command that writes refuses an output path that is not a regular file (a directory, for directory outputs)
or a new name — issue 21 rows 2 and 13: `run --profile /dev/null` replaced the device node with a regular file
(as root, a system device), and `train --data d/data.jsonl --out d/data.jsonl --force` overwrote the dataset.

One table: each writing command × each kind of path (new, existing regular file or directory, directory, device,
FIFO, socket, symbolic link, the command's own input). The check runs before any work, so the commands are
given inputs that do not exist: an accepted output then fails later on that input, never on the output; a
refused one says what the path is, in one line, and the path is left exactly as it was.
"""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from crome_cli.main import main

REFUSED = ("crome-edge writes only", "is a directory; give a file name", "the command's own input", "which the command reads", "is a symbolic link")

# command -> (argv with {out} and {root}, "file" or "dir" output)
WRITERS = {
    "run --profile": ("run --bundle {root}/nb --image {root}/in.png --prompt hi --profile {out}", "file"),
    "verify --report": ("verify {root}/nb --report {out}", "file"),
    "serve --profile": ("serve --bundle {root}/nb --camera none --profile {out}", "file"),
    "serve --events": ("serve --bundle {root}/nb --camera none --events {out}", "file"),
    "train --out": ("train --backbone tiny --data {root}/data/data.jsonl --out {out} --steps 1", "file"),
    "train --checkpoint": ("train --backbone tiny --data {root}/data/data.jsonl --out {root}/a.safetensors "
                           "--checkpoint {out} --steps 1", "file"),
    "data video --out": ("data video --out {out} --frames 1", "file"),
    "data synth --out": ("data synth --out {out} --n 1 --size 32", "dir"),
    "export --out": ("export --adapter {root}/in.safetensors --out {out}", "dir"),
    "bundle add": ("bundle add {out} --adapter {root}/in.safetensors", "dir"),
    "bundle remove": ("bundle remove {out} colour", "dir"),
    "triton-repo": ("triton-repo {root}/nb {out}", "dir"),
    "build-engines": ("build-engines {out}", "dir"),
}
# command -> the output path that is its own input (None: it reads no file it could overwrite)
OWN_INPUT = {
    "run --profile": "{root}/in.png", "verify --report": "{root}/nb/manifest.json", "serve --profile": "{root}/nb/x.json",
    "serve --events": "{root}/nb/manifest.json", "train --out": "{root}/data/data.jsonl",
    "train --checkpoint": "{root}/data/data.jsonl", "export --out": "{root}/in.safetensors", "triton-repo": "{root}/nb",
}
APPENDED = {"serve --events"}  # a log opened for appending: a character device or a link is written through, never replaced
KINDS = ["new", "existing", "directory", "device", "fifo", "socket", "symlink to device", "symlink to file", "own input"]


def _make(kind: str, root: Path, output: str, command: str) -> Path | None:
    path = root / "out"
    if kind == "new":
        return path
    if kind == "existing":
        (path.mkdir() if output == "dir" else path.write_text("old"))
        return path
    if kind == "directory":
        if output == "dir":
            return None  # a directory is what a directory output is
        path.mkdir()
        return path
    if kind == "device":
        return Path("/dev/null")
    if kind == "fifo":
        os.mkfifo(path)
        return path
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
        return path
    if kind == "symlink to device":
        path.symlink_to("/dev/null")
        return path
    if kind == "symlink to file":
        (root / "target").write_text("old")
        path.symlink_to(root / "target")
        return path
    own = OWN_INPUT.get(command)
    return Path(own.format(root=root)) if own else None


def _snapshot(path: Path):
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), info.st_ino, info.st_rdev, (path.read_bytes() if stat.S_ISREG(info.st_mode) else b"")


@pytest.fixture
def root(tmp_path):
    (tmp_path / "nb").mkdir()  # stands for a bundle: the commands fail on it after the output check
    (tmp_path / "nb" / "manifest.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.jsonl").write_text('{"image": "x.png", "question": "q?", "answer": "a"}\n')
    (tmp_path / "in.png").write_bytes(b"not an image")
    (tmp_path / "in.safetensors").write_bytes(b"not an adapter")
    return tmp_path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", list(WRITERS))
def test_every_writing_command_refuses_what_is_not_a_file_or_a_new_name(command, kind, root, capsys):
    template, output = WRITERS[command]
    if command == "serve --profile" and kind in ("new", "existing"):
        pytest.skip("an accepted path would start the server: its refusals are the point here")
    path = _make(kind, root, output, command)
    if path is None:
        pytest.skip(f"{command}: no such case ({kind})")
    before = _snapshot(path) if os.path.lexists(path) else None
    argv = template.format(root=root, out=path).split()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    if kind in ("new", "existing") or (command in APPENDED and kind in ("device", "symlink to device", "symlink to file")):
        assert not any(marker in err for marker in REFUSED), err  # accepted: it failed on its missing inputs, if at all
    else:
        assert code == 2, err
        assert len(lines) == 1 and any(marker in lines[0] for marker in REFUSED), err
        assert "Traceback" not in err
    if before is not None and kind != "existing":  # an accepted existing output may be replaced (data synth did);
        # a device, accepted or not, is never replaced
        assert _snapshot(path) == before, f"{command} changed {path}"


def test_the_atomic_writer_refuses_a_device_whatever_calls_it(tmp_path):
    """Defence in depth: code that reaches atomic_path without the command-line check still cannot replace one."""
    from crome_runtime.atomic import atomic_path
    from crome_runtime.outputs import OutputError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (Path("/dev/null"), fifo):
        with pytest.raises(OutputError, match="is a (device|FIFO)"):
            with atomic_path(target) as tmp:
                tmp.write_text("x")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
