"""Subprocess side of tests/test_bad_inputs.py (a helper, not a test module): runs bad-input cases one after the
other in this process, under an address-space limit, and prints one JSON result per case as it finishes.

    python tests/bad_input_runner.py LIMIT_BYTES ROOT WATCHED_DIR TEMP_DIR < cases.json

A case is {"name", "argv"} (a `crome-edge` command line, through crome_cli.main.main) or {"name", "call":
"module:function", "args"} (a file loader, called with string arguments). Each result records the exit status
(or the exception's class and message), everything written to file descriptors 1 and 2 (so OpenCV's or ONNX
Runtime's own lines are seen too), a traceback if one escaped, the files under WATCHED_DIR that were opened
(audit hook: nothing may be read outside a bundle or dataset), what changed under ROOT (the fixtures: nothing
may be written half-way) and what the case left in TEMP_DIR (the process's TMPDIR). One address
space for all cases: RLIMIT_AS bounds every case, and a case that needs more fails with MemoryError (recorded)
instead of slowing the machine down. Imports happen once, so the suite stays fast.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import tempfile
import traceback


def main() -> None:
    limit, root = int(sys.argv[1]), sys.argv[2]
    watched, temp = os.path.realpath(sys.argv[3]), os.path.realpath(sys.argv[4])
    cases = json.load(sys.stdin)
    results = os.fdopen(os.dup(1), "w")  # the JSON lines go here; fd 1 itself is captured per case
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    opened: list[str] = []
    recording = [False]  # only while a case runs (the runner's own directory walks are not the case's)

    def audit(event: str, args) -> None:
        if recording[0] and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if os.path.realpath(path).startswith(watched + os.sep):
                opened.append(path)

    import crome_runtime  # noqa: F401  before cv2, as the CLI does (OpenCV's pixel limit)
    from crome_cli import main as cli

    sys.addaudithook(audit)
    for case in cases:
        opened.clear()
        result = {"name": case["name"]}
        before = _snapshot(root)
        with tempfile.TemporaryFile() as captured:
            saved = os.dup(1), os.dup(2)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(captured.fileno(), 1), os.dup2(captured.fileno(), 2)
            recording[0] = True
            try:
                result.update(_run(case, cli))
            finally:
                recording[0] = False
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                os.close(saved[0]), os.close(saved[1])
            captured.seek(0)
            result["output"] = captured.read().decode("utf-8", "replace")[-4000:]
        result["opened"] = sorted(set(opened))[:10]
        after = _snapshot(root)
        result["changed"] = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))[:20]
        result["temp_left"] = sorted(os.listdir(temp))
        results.write(json.dumps(result) + "\n")
        results.flush()


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under root, (0, 0) for a directory (whose mtime a probe
    file, created and removed at once, would change); symbolic links not followed."""
    found = {}
    for directory, names, files in os.walk(root):
        for name in names:
            found[os.path.relpath(os.path.join(directory, name), root)] = (0, 0)
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def _run(case: dict, cli) -> dict:
    try:
        if "argv" in case:
            return {"rc": cli.main(case["argv"])}
        module, function = case["call"].split(":")
        getattr(importlib.import_module(module), function)(*case.get("args", []))
        return {"rc": 0}
    except SystemExit as done:
        return {"rc": done.code}
    except BaseException as error:  # recorded: the test says which case let an exception out
        return {"rc": None, "exception": type(error).__name__, "message": str(error)[:2000],
                "traceback": traceback.format_exc()[-3000:]}


if __name__ == "__main__":
    main()
