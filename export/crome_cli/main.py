"""`crome-edge` command line: a thin dispatcher over one module per command.

Each command module exposes `add_arguments(parser)` and `run(args) -> int` and must be cheap to import
(no torch at module level), so that `crome-edge run`/`serve` work on a torch-free device.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from crome_runtime.errors import CromeError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ask": ("crome_cli.ask", "Answer questions about an image with the PyTorch model (quick look)"),
    "models": ("crome_cli.models", "List, pull and inspect backbone models"),
    "train": ("crome_cli.train", "Train a CROME adapter (finetune) or the backbone's Q-Former/projection (pretrain)"),
    "eval": ("crome_cli.eval", "Accuracy of a backbone (+ adapter) on a dataset, as JSON"),
    "info": ("crome_cli.info", "Print what an adapter file or bundle is"),
    "data": ("crome_cli.data", "Generate synthetic conveyor datasets"),
    "export": ("crome_cli.export", "Export an adapter + its backbone to a deployment bundle"),
    "bundle": ("crome_cli.bundle", "Add, remove or list the adapters of a bundle; list or roll back an adapter's versions"),
    "build-engines": ("crome_cli.engines", "Build TensorRT engines for a bundle on this device"),
    "run": ("crome_cli.run", "Answer a question about an image with a bundle (torch-free)"),
    "serve": ("crome_cli.serve", "Serve a bundle: camera, watch prompts, OpenAI-compatible API, web view (torch-free)"),
    "verify": ("crome_cli.verify", "Run a bundle's acceptance set on this device against PyTorch's answers (torch-free)"),
    "triton-repo": ("crome_cli.triton_repo", "Write a Triton Inference Server model repository from a bundle (torch-free)"),
    "tritonserver": ("crome_cli.tritonserver", "Start Triton Inference Server on a model repository (torch-free)"),
    "client": ("crome_cli.client", "Stream frames from several cameras to Triton; answers and latency per camera"),
}


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr (which flag, what it must be), exit status 2, as every other
    user error; `--help` still prints the usage. Sub-command parsers are made of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crome-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every `finally`, temporary directory and atomic
    write cleans up instead of the process dying mid-write (Python's default for SIGTERM)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def one_line(message: str) -> str:
    """An error message as one line: a line break, escape or other control character that came from a name or a
    file (an adapter named `b\nc`) is shown escaped, as Python writes it, instead of breaking or recolouring the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0), or a bad command line (2; _Parser printed the one-line error)
        return int(done.code or 0)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args._module.run(args) or 0)
    except CromeError as error:  # every project error, the runtime's included: one line, its exit status
        print(f"crome-edge {args.command}: error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the environment refused something no check caught (a full disk, a permission)
        where = f": {error.filename}" if error.filename else ""
        print(f"crome-edge {args.command}: error: {one_line(f'{error.strerror or error}{where}')}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"crome-edge {args.command}: terminated (SIGTERM); temporary files were removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"crome-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
