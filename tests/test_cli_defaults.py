"""CLI defaults live once, in the dataclass: `crome-edge train` and `crome-edge run` flags default to None,
the help text states the dataclass's value, and a flag the user leaves out leaves the dataclass's default."""
import subprocess
import sys
from dataclasses import MISSING, fields

from crome_cli.main import build_parser
from crome_cli.train import config_from_args
from crome_edge.training.config import DEFAULT_LR, TrainConfig
from crome_runtime import formats


def _subparser(name):
    parser = build_parser()
    return next(a for a in parser._subparsers._actions if a.choices and name in a.choices).choices[name]


def test_train_without_flags_is_the_dataclass_defaults():
    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--out", "a.safetensors"])
    assert config_from_args(args) == TrainConfig(data="d.jsonl", out="a.safetensors")
    assert config_from_args(args).backbone == "smol"  # the embedded default the README documents


def test_train_flags_override_only_what_is_given():
    argv = ["train", "--data", "d", "--out", "o", "--backbone", "tiny", "--rank", "8", "--bf16", "--no-progress",
            "--lr", "0.02", "--checkpoint-every", "5"]  # (--checkpoint-every 0 is refused: the flag means every N >= 1)
    config = config_from_args(build_parser().parse_args(argv))
    expected = TrainConfig(data="d", out="o", backbone="tiny", rank=8, bf16=True, progress=False, lr=0.02,
                           checkpoint_every=5)
    assert config == expected


def test_every_train_flag_defaults_to_none_and_its_help_states_the_dataclass_default():
    parser = _subparser("train")
    actions = {a.dest: a for a in parser._actions}
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    for name in defaults:
        if name in actions:
            assert actions[name].default is None, f"--{name} has its own default {actions[name].default!r}"
    for name in ("backbone", "stage", "rank", "augment", "epochs", "batch_size", "val_fraction", "seed",
                 "max_new_tokens", "save_dtype", "device"):
        assert f"default: {defaults[name]}" in actions[name].help, name
    assert f"{DEFAULT_LR['finetune']:g} finetune" in actions["lr"].help


def test_run_provider_choices_are_the_runtimes_and_parse_without_cv2_or_torch():
    from crome_runtime import providers

    assert providers.CHOICES == formats.PROVIDER_CHOICES
    actions = {a.dest: a for a in _subparser("run")._actions}
    assert tuple(actions["provider"].choices) == formats.PROVIDER_CHOICES
    assert actions["provider"].default is None and actions["threads"].default is None
    code = ("import sys; import crome_cli.run, crome_cli.train; "
            "bad = [m for m in ('torch', 'cv2') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
