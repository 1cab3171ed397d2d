"""Write a synthetic dataset to disk: PNG frames, data.jsonl (Q&A), scenes.jsonl (ground truth).

Layout of DIR (what `crome-edge data synth` writes and `crome_edge.data.load_dataset` reads):

    images/000000.png ...   frame i of the dataset (BGR PNG, size x size)
    data.jsonl              one line per (frame, question): {"image": "images/000000.png",
                            "question": "...", "answer": "..."}; image paths are relative to DIR
    scenes.jsonl            one line per frame: {"image": ..., "seed", "kind", "colour", "defect",
                            "geometry": {"cx", "cy", "radius", "angle"}} — labels for representation
                            training (stage A) and for checking answers
    dataset.json            how it was made: task, split, seeds, size, question mode, counts, and the
                            regeneration recipe + content sha256 training copies into an adapter (recipe.py)

Pretraining datasets ask every frame all five PRETRAIN_QUESTIONS (5 lines per frame, questions="all")
or one question per frame, rotating by seed (questions="one"); line datasets ask their one question
(LINE3_QUESTION, LINE5_QUESTION) once.
The directory is written next to DIR under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from crome_edge.errors import CromeError
from crome_edge.synth.qa import Q_CAPTION
from crome_edge.synth.recipe import DATA_FILE, INFO_FILE, SynthRecipe, content_sha256
from crome_edge.synth.samples import iter_samples
from crome_edge.synth.splits import split_seeds
from crome_edge.synth.world import DEFAULT_SIZE
from crome_runtime import input_files

SCENES_FILE = "scenes.jsonl"
IMAGES_DIR = "images"
MIN_SIZE, MAX_SIZE = 32, 1024  # frame side: a 1024 px frame is 3 MB of BGR (20000 px would be 1.2 GB, per frame)


@dataclass(frozen=True)
class SynthConfig:
    out: str
    task: str = "pretrain"  # "pretrain" | "line3" | "line5" (synth.splits.TASKS)
    split: str = "train"  # "train" | "val" | "test"
    n: int = 1000  # frames
    seed: int = 0  # first frame's offset inside the split's seed range
    size: int = DEFAULT_SIZE
    questions: str = "all"  # pretrain only: "all" | "one"
    force: bool = False  # replace an existing DIR that is a synthetic dataset (never any other directory)


@dataclass(frozen=True)
class SynthSummary:
    out: str
    frames: int
    samples: int
    first_seed: int
    answers: dict[str, int]  # answer -> count (line tasks and short pretraining answers)


def write_dataset(config: SynthConfig) -> SynthSummary:
    """Render config.n frames of a task's split into config.out (atomically). CromeError on bad input."""
    out = Path(config.out).expanduser().absolute()
    _check_target(out, config.force)
    seeds = _seeds(config)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as error:
        raise CromeError(f"cannot write in {out.parent} ({error.strerror or error}); choose a writable --out") from None
    try:
        summary = _write_into(tmp, out, config, seeds)
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it 0700; give it a plain directory's mode
        _move_into_place(tmp, out)
    except OSError as error:  # e.g. the disk filled up: nothing is left behind, the message says why
        shutil.rmtree(tmp, ignore_errors=True)
        raise CromeError(f"writing {out} failed ({error.strerror or error}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def render_into(directory: Path, config: SynthConfig) -> SynthSummary:
    """Render config's frames into the empty `directory`, in place (not atomic, config.out and config.force unused):
    the build directory of a cache entry (crome_edge.synth.recipe writes the user-cache copies through
    crome_runtime.cache_entry). CromeError on bad input."""
    return _write_into(directory, directory, config, _seeds(config))


def _seeds(config: SynthConfig) -> range:
    if not MIN_SIZE <= config.size <= MAX_SIZE:
        raise CromeError(f"--size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {config.size}")
    if config.n < 1:
        raise CromeError(f"--n must be at least 1, got {config.n}")
    return split_seeds(config.task, config.split, config.n, config.seed)


def _write_into(tmp: Path, out: Path, config: SynthConfig, seeds: range) -> SynthSummary:
    """images/, data.jsonl, scenes.jsonl and dataset.json into tmp (which becomes `out`)."""
    (tmp / IMAGES_DIR).mkdir()
    answers: Counter[str] = Counter()
    samples = 0
    with open(tmp / DATA_FILE, "w", encoding="utf-8") as data, open(tmp / SCENES_FILE, "w", encoding="utf-8") as scenes:
        last_seed = None
        for sample in iter_samples(config.task, seeds, config.size, config.questions):
            seed = sample.scene.seed
            assert seed is not None  # every sample is rendered from its seed
            name = f"{IMAGES_DIR}/{seed - seeds.start:06d}.png"  # frame i of the dataset
            if seed != last_seed:  # first sample of a new frame
                if not cv2.imwrite(str(tmp / name), sample.image):
                    raise CromeError(f"OpenCV could not write {tmp / name} (is the disk full?); nothing was written")
                scenes.write(json.dumps({"image": name, **sample.scene.to_dict()}) + "\n")
                last_seed = seed
            data.write(json.dumps({"image": name, "question": sample.question, "answer": sample.answer}) + "\n")
            samples += 1
            if sample.question != Q_CAPTION:  # closed-vocabulary answers only
                answers[sample.answer] += 1
    summary = SynthSummary(str(out), len(seeds), samples, seeds.start, dict(sorted(answers.items())))
    made = {k: v for k, v in asdict(config).items() if k not in ("out", "force")}
    recipe = SynthRecipe(config.task, config.split, config.n, config.seed, config.size, config.questions)
    info = {**made, "first_seed": seeds.start, "last_seed": seeds.stop - 1,
            "frames": len(seeds), "samples": samples, "answers": summary.answers,
            "recipe": recipe.to_dict(), "sha256": content_sha256(tmp)}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return summary


def _check_target(out: Path, force: bool) -> None:
    if not out.parent.is_dir():
        raise CromeError(f"cannot write {out}: parent directory {out.parent} does not exist (create it first)")
    if out.exists() and not out.is_dir():
        raise CromeError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CromeError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
        why_not = _not_a_dataset(out)
        if why_not:
            raise CromeError(f"--force replaces a synthetic dataset, and {out} is not one ({why_not}); nothing was "
                             "changed. Choose another --out")


def _not_a_dataset(directory: Path) -> str | None:
    """Why `directory` is not a dataset this writer made (None when it is): dataset.json says so, and nothing else
    is inside but data.jsonl, scenes.jsonl and images/ of frame PNGs, so --force can never delete anyone's files."""
    info = directory / INFO_FILE
    if info.is_symlink() or not info.is_file():
        return f"it has no {INFO_FILE}"
    try:
        made = input_files.read_json(info)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"its {INFO_FILE} is not readable JSON"
    if not (isinstance(made, dict) and "task" in made and "frames" in made):
        return f"its {INFO_FILE} was not written by `crome-edge data synth`"
    others = sorted(p.name for p in directory.iterdir() if p.name not in (INFO_FILE, DATA_FILE, SCENES_FILE, IMAGES_DIR))
    if others:
        return f"it also holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}"
    for name in (DATA_FILE, SCENES_FILE):
        if (directory / name).is_symlink() or ((directory / name).exists() and not (directory / name).is_file()):
            return f"its {name} is not a regular file"
    images = directory / IMAGES_DIR
    if images.is_symlink() or (images.exists() and not images.is_dir()):
        return f"its {IMAGES_DIR} is not a directory"
    if images.is_dir():
        for entry in os.scandir(images):
            if not (entry.is_file(follow_symlinks=False) and entry.name.endswith(".png") and entry.name[:-4].isdigit()):
                return f"its {IMAGES_DIR}/ also holds {entry.name}"
    return None


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (empty, or replaced under --force) is moved aside first."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / out.name, out)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)
