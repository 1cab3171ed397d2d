"""How a synthetic dataset was made, so that it can be made again bit for bit (export needs the frames an
adapter was trained on, and a user who copies only the adapter has not got them).

A recipe is the arguments of `crome-edge data synth` that decide its content (task, split, n, seed, size,
question mode) plus the generator's version. The dataset writer stores it in DIR/dataset.json together with
the content's sha256 (of data.jsonl's bytes and of the decoded frames, so PNG encoder differences between
OpenCV builds do not matter). Training copies recipe + sha256 into the adapter's metadata, but only when the
files it read still hash to what the writer recorded (a set edited after `synth` is not that recipe's set).
Export calls `regenerate` when the recorded path is gone: it re-renders the set into the user cache dir,
keyed by the recipe, checks the hashes and reuses the set the next time.

Torch-free. Not here: rendering (world.py, samples.py), writing (dataset_writer.py), splitting (crome_edge.data).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crome_edge.errors import CromeError
from crome_runtime import input_files
from crome_runtime.cache_entry import write_entry

GENERATOR = "crome-edge data synth"
# Bump whenever render_scene, the Q&A, the line-3 rule, the seed ranges or the file layout change what a
# recipe produces: an adapter that records another version is then told so instead of getting other frames.
GENERATOR_VERSION = 2  # 2: no-part frames (world.NO_PART) and their answers
INFO_FILE = "dataset.json"  # dataset_writer.INFO_FILE (that module imports this one)
DATA_FILE = "data.jsonl"
DATASETS_DIR = "datasets"  # under the user cache dir


@dataclass(frozen=True)
class SynthRecipe:
    task: str
    split: str
    n: int
    seed: int  # first frame's offset inside the split's seed range
    size: int
    questions: str
    generator_version: int = GENERATOR_VERSION

    def to_dict(self) -> dict:
        return {"generator": GENERATOR, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: object) -> "SynthRecipe":
        """CromeError when the record is malformed or from another generator version."""
        if not isinstance(raw, dict) or raw.get("generator") != GENERATOR:
            raise CromeError(f"not a `{GENERATOR}` recipe: {raw!r}")
        try:
            recipe = cls(task=str(raw["task"]), split=str(raw["split"]), n=int(raw["n"]), seed=int(raw["seed"]),
                         size=int(raw["size"]), questions=str(raw["questions"]),
                         generator_version=int(raw["generator_version"]))
        except (KeyError, TypeError, ValueError) as error:
            raise CromeError(f"malformed synthetic-data recipe {raw!r} ({error!r})") from None
        if recipe.generator_version != GENERATOR_VERSION:
            raise CromeError(
                f"the data was made by synthetic-data generator version {recipe.generator_version}; this crome-edge "
                f"has version {GENERATOR_VERSION} and would render other frames"
            )
        return recipe

    def key(self) -> str:
        """sha256 of the recipe: its directory name in the cache."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def describe(self) -> str:
        return (f"`{GENERATOR} --task {self.task} --split {self.split} --n {self.n} --seed {self.seed} "
                f"--size {self.size}" + (f" --questions {self.questions}`" if self.task in ("pretrain", "general") else "`"))


class FrameHasher:
    """sha256 over decoded frames in dataset order: (H, W, 3) uint8 BGR each, shape included."""

    def __init__(self):
        self._digest = hashlib.sha256()

    def add(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"frames are (H, W, 3) uint8, got {image.dtype} {image.shape}")
        self._digest.update(json.dumps(list(image.shape)).encode())
        self._digest.update(np.ascontiguousarray(image).tobytes())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def content_sha256(directory: Path) -> dict[str, str]:
    """{"data.jsonl": sha256 of its bytes, "frames": FrameHasher over its images in first-use order}, read
    from disk with the runtime's image loader (what training and export decode). CromeError when unreadable."""
    from crome_runtime.preprocess import ImageError, load_image

    data = Path(directory) / DATA_FILE
    try:
        raw = data.read_bytes()
    except OSError as error:
        raise CromeError(f"cannot read {data} ({error.strerror or error})") from None
    images: dict[str, None] = {}
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                images.setdefault(input_files.loads(line, "the line")["image"], None)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CromeError(f"{data} line {number} is not a synthetic-dataset line") from None
    frames = FrameHasher()
    for name in images:
        try:
            frames.add(load_image(data.parent / name))
        except ImageError as error:
            raise CromeError(f"synthetic dataset {directory}: {error}") from None
    return {DATA_FILE: hashlib.sha256(raw).hexdigest(), "frames": frames.hexdigest()}


def training_record(jsonl: Path) -> tuple[dict | None, str | None]:
    """What training stores about a dataset it read from `jsonl`: ({"recipe", "sha256"} or None, a note).

    None (with a note saying why, or no note for a user's own data) unless `jsonl` is the data.jsonl of a
    `crome-edge data synth` directory whose files still hash to what the writer recorded."""
    jsonl = Path(jsonl)
    info_path = jsonl.parent / INFO_FILE
    if jsonl.name != DATA_FILE or not info_path.is_file():
        return None, None
    try:
        info = input_files.read_json(info_path)
        recipe, recorded = SynthRecipe.from_dict(info["recipe"]), dict(info["sha256"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, CromeError) as error:
        return None, f"{info_path} has no usable regeneration recipe ({error}); export will need this data or --calib"
    try:
        intact = content_sha256(jsonl.parent) == recorded
    except CromeError as error:  # a missing or broken frame: training itself names every bad image
        return None, f"{jsonl.parent} cannot be hashed ({error}); the adapter records no regeneration recipe"
    if not intact:
        return None, (f"{jsonl.parent} was changed after `{GENERATOR}` wrote it, so the adapter records no "
                      "regeneration recipe; export will need this data (or --data / --calib)")
    return {"recipe": recipe.to_dict(), "sha256": recorded}, None


def regenerate(record: dict, note: Callable[[str], None] = lambda message: None,
               cache_root: Path | None = None) -> Path:
    """Re-renders a recorded synthetic set into `<cache>/datasets/<task>-<split>-<n>-<key>/` (atomically; reused
    when already there and intact) and returns its data.jsonl. CromeError when the recipe cannot be replayed
    or the frames come out different from the recorded sha256."""
    recipe = SynthRecipe.from_dict(record.get("recipe") if isinstance(record, dict) else None)
    expected = record.get("sha256")
    if not isinstance(expected, dict) or set(expected) != {DATA_FILE, "frames"}:
        raise CromeError(f"malformed synthetic-data record (sha256 {expected!r})")
    target = _cached_dir(recipe, cache_root)
    if (target / INFO_FILE).is_file() and content_sha256(target) == expected:
        note(f"training data: reusing the regenerated {recipe.describe()} in {target}")
        return target / DATA_FILE
    note(f"training data: regenerating {recipe.describe()} ({recipe.n} frames) into {target}")
    _render(recipe, target)
    got = content_sha256(target)
    if got != expected:
        which = " and ".join(name for name in (DATA_FILE, "frames") if got[name] != expected[name])
        raise CromeError(
            f"regenerated {recipe.describe()} but its {which} differ from what the adapter was trained on "
            f"(sha256 {got['frames'][:12]}… vs {expected['frames'][:12]}…; the renderer or OpenCV changed?). Pass "
            "--data with the original training set, or --calib DIR (task accuracy is then not measured)"
        )
    return target / DATA_FILE


def materialize(recipe: SynthRecipe, note: Callable[[str], None] = lambda message: None,
                cache_root: Path | None = None) -> Path:
    """The data.jsonl of `recipe`'s set in the user cache: rendered there once (atomically), reused while its files
    still hash to what the writer recorded (a damaged copy is rendered again)."""
    target = _cached_dir(recipe, cache_root)
    if _intact(target):
        return target / DATA_FILE
    note(f"rendering {recipe.describe()} ({recipe.n} frames) into {target}")
    _render(recipe, target)
    return target / DATA_FILE


def _intact(directory: Path) -> bool:
    """True when a synthetic set's files hash to what its writer recorded in dataset.json."""
    try:
        recorded = input_files.read_json(directory / INFO_FILE)["sha256"]
        return content_sha256(directory) == recorded
    except (OSError, json.JSONDecodeError, KeyError, TypeError, CromeError):
        return False  # absent or damaged: the caller renders it (again)


def _cached_dir(recipe: SynthRecipe, cache_root: Path | None) -> Path:
    if cache_root is None:
        from crome_edge.store.entries import cache_root as user_cache

        cache_root = user_cache()
    return Path(cache_root) / DATASETS_DIR / f"{recipe.task}-{recipe.split}-{recipe.n}-{recipe.key()[:16]}"


def _render(recipe: SynthRecipe, target: Path) -> None:
    """Renders `recipe` into the cache entry `target` (crome_runtime.cache_entry: complete or absent; a concurrent
    render of the same recipe succeeds too; a killed render's build directory is removed a day later)."""
    from crome_edge.synth.dataset_writer import SynthConfig, render_into

    config = SynthConfig(out=str(target), task=recipe.task, split=recipe.split, n=recipe.n, seed=recipe.seed,
                         size=recipe.size, questions=recipe.questions)

    def build(directory: Path) -> dict:
        render_into(directory, config)
        info = input_files.read_json(directory / INFO_FILE)
        return {"recipe": recipe.to_dict(), "sha256": info["sha256"]}

    # `.NAME.tmp-*`: the build directories of the dataset writer that wrote these entries before
    write_entry(target, build, what="dataset cache", stale_patterns=(".*.tmp-*",))
