"""Which frames an export calibrates on and which held-out samples its fidelity report is measured on.

Default: the adapter's own training data (metadata `train_data` + the `training` summary's val_fraction
and split_seed, re-split with crome_edge.data): INT8 calibrates on frames of the training split, the report
is measured on the validation split, which the adapter never saw. When that path is gone and the adapter
records a synthetic set's recipe (`train_data_recipe`), the set is regenerated bit for bit into the user
cache (crome_edge.synth.recipe); a user's own data that moved needs --data. `--calib N` takes N training frames;
`--calib DIR` calibrates on the images in DIR instead. With no dataset at all (e.g. a random adapter), an
FP32/FP16 export measures fidelity on synthetic conveyor frames and reports no task accuracy.
Pixels go through crome_edge.data.pixels (the runtime's own preprocessing). Not here: running anything.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crome_edge.data import IMAGE_SUFFIXES, Sample, load_training_split
from crome_edge.errors import CromeError

DEFAULT_CALIBRATION_FRAMES = 128
DEFAULT_EVAL_LIMIT = 200
SYNTHETIC_EVAL_FRAMES = 8
DEFAULT_QUESTIONS = ("What part is this?", "What colour is the part?", "Is the part defective, and how?")
CALIBRATION_BATCH = 8


@dataclass
class ExportData:
    calibration: list[Sample]  # frames (+ questions) INT8 calibrates on; empty when nothing calibrates
    evaluation: list[Sample]  # held-out samples for fidelity (and task accuracy when has_answers)
    has_answers: bool
    calibration_source: str  # for the report: where the calibration frames came from
    evaluation_source: str
    pixels: dict[Path, np.ndarray]  # image -> (3, S, S) float32, every image above, preprocessed once
    rendered: dict[Path, np.ndarray] = field(default_factory=dict)  # synthetic frames: key -> (H, W, 3) uint8 BGR
    # the adapter's closed answer set (crome_runtime.confidence.answer_set of its training split), [] if open-set
    answers: list[str] = field(default_factory=list)

    def frame(self, image: Path) -> np.ndarray:
        """The image as a camera gives it, (H, W, 3) uint8 BGR (for the bundle's acceptance set)."""
        from crome_runtime.preprocess import load_image

        return self.rendered[image] if image in self.rendered else load_image(image)

    def batch(self, samples: list[Sample]) -> np.ndarray:
        return np.stack([self.pixels[s.image] for s in samples])  # (B, 3, S, S)

    def calibration_id(self) -> str:
        """sha256 over the calibration pixels and questions: the INT8 part of the backbone cache key."""
        digest = hashlib.sha256()
        for sample in self.calibration:
            digest.update(sample.question.encode())
            digest.update(self.pixels[sample.image].tobytes())
        return digest.hexdigest()


def parse_calib(value: str | None) -> int | Path | None:
    """`--calib`: None (default), a positive frame count, or an image directory."""
    if value is None:
        return None
    if value.isdigit():
        if int(value) <= 0:
            raise CromeError("--calib N needs N >= 1 calibration frames")
        return int(value)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise CromeError(f"--calib {value}: neither a frame count nor an existing directory of images")
    return path


def load_export_data(meta, info, calib: int | Path | None, needs_calibration: bool, eval_limit: int,
                     note: Callable[[str], None] = lambda message: None) -> ExportData:
    """meta: the adapter's AdapterMetadata; info: the backbone's BackboneInfo; note: progress lines."""
    train, val, dataset_source = _training_split(meta, note)
    questions = list(dict.fromkeys(s.question for s in train + val)) or list(DEFAULT_QUESTIONS)
    calibration: list[Sample] = []
    calibration_source = "none (no INT8 part)"
    if isinstance(calib, Path):
        calibration = _directory_samples(calib, questions)
        calibration_source = f"{len(calibration)} images in {calib.absolute()}"
    elif train or val:
        count = calib or DEFAULT_CALIBRATION_FRAMES
        pool = _distinct_images(train) or _distinct_images(val)
        calibration = random.Random(0).sample(pool, min(count, len(pool)))
        calibration_source = f"{len(calibration)} frames of the training split of {dataset_source}"
    if needs_calibration and not calibration:
        raise CromeError(
            "INT8 needs calibration frames and the adapter records no training data; pass --calib DIR "
            "(a directory of frames like the ones the camera will see) or export --precision fp32"
        )
    if not needs_calibration:
        calibration, calibration_source = [], "none (no INT8 part)"
    if val:
        evaluation, has_answers = val[:eval_limit], True
        evaluation_source = f"validation split of {dataset_source} ({len(evaluation)} of {len(val)} samples)"
    elif train:
        evaluation, has_answers = train[:eval_limit], True
        evaluation_source = f"training split of {dataset_source} (the adapter has no validation split; not held out)"
    elif calibration:
        evaluation = [Sample(s.image, q, "", s.origin) for s in calibration[:SYNTHETIC_EVAL_FRAMES] for q in DEFAULT_QUESTIONS]
        has_answers, evaluation_source = False, f"calibration frames with {len(DEFAULT_QUESTIONS)} default questions (no labels)"
    else:
        evaluation, has_answers = [], False
        evaluation_source = f"{SYNTHETIC_EVAL_FRAMES} synthetic conveyor frames x {len(DEFAULT_QUESTIONS)} default questions (no labels)"
    pixels = _preprocess(calibration + evaluation, info)
    rendered: dict[Path, np.ndarray] = {}
    if not evaluation:
        evaluation, synthetic, rendered = _synthetic_samples(info)
        pixels.update(synthetic)
    return ExportData(calibration, evaluation, has_answers, calibration_source, evaluation_source, pixels, rendered,
                      _answer_set(meta, train + val))


def _answer_set(meta, samples: list[Sample]) -> list[str]:
    """The training data's closed answer set; none for an adapter that replayed the backbone's own questions (its
    answers to those are not in the data, so the set would not be what it says)."""
    from crome_runtime.confidence import answer_set

    if meta.training.get("replay"):
        return []
    return answer_set(s.answer for s in samples) or []


def _training_split(meta, note: Callable[[str], None]) -> tuple[list[Sample], list[Sample], str]:
    """(train, validation, source) of the adapter's training data: the recorded path, else the regenerated
    synthetic set it records, else a CromeError saying how to point export at the data."""
    if not meta.train_data:
        return [], [], ""
    data, source = meta.train_data, meta.train_data
    if not Path(data).exists():
        if meta.train_data_recipe is None:
            raise CromeError(
                f"the adapter was trained on {meta.train_data}, which is not there any more; pass --data with its "
                "new location (synthetic sets: `crome-edge data synth` regenerates them), or --calib DIR with "
                "frames to calibrate on (task accuracy is then not measured)"
            )
        from crome_edge.synth.recipe import regenerate

        note(f"training data: {meta.train_data} is not here; the adapter records how it was made")
        data = str(regenerate(meta.train_data_recipe, note))
        source = f"{data} (regenerated; trained on {meta.train_data})"
    _, train, val = load_training_split(data, meta.training)
    return train, val, source


def _distinct_images(samples: list[Sample]) -> list[Sample]:
    return list({s.image: s for s in reversed(samples)}.values())[::-1]  # first sample per image


def _directory_samples(directory: Path, questions: list[str]) -> list[Sample]:
    images = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise CromeError(
            f"calibration directory {directory} has no images ({', '.join(IMAGE_SUFFIXES)}); point --calib at "
            "a directory of camera frames"
        )
    return [Sample(p.absolute(), questions[i % len(questions)], "", p.name) for i, p in enumerate(images)]


def _preprocess(samples: list[Sample], info) -> dict[Path, np.ndarray]:
    from crome_edge.data.pixels import PixelStore

    store = PixelStore.for_backbone(info)
    store.prepare(samples)  # CromeError naming unreadable images
    return {s.image: store.pixels(s.image).numpy() for s in samples}


def _synthetic_samples(info) -> tuple[list[Sample], dict[Path, np.ndarray], dict[Path, np.ndarray]]:
    """-> samples, key -> preprocessed pixels, key -> the rendered (H, W, 3) uint8 BGR frame."""
    from crome_edge.synth.world import render_scene
    from crome_runtime.preprocess import preprocess_image

    samples, pixels, rendered = [], {}, {}
    for i in range(SYNTHETIC_EVAL_FRAMES):
        key = Path(f"<synthetic frame {i}>")
        rendered[key], _ = render_scene(90_000_000 + i, 128)
        pixels[key] = preprocess_image(rendered[key], info.image_size, info.image_mean, info.image_std, info.resize)
        samples += [Sample(key, q, "", key.name) for q in DEFAULT_QUESTIONS]
    return samples, pixels, rendered


def calibration_feeds(data: ExportData, backbone) -> list[dict[str, np.ndarray]]:
    """Vision-graph feeds for INT8 calibration, CALIBRATION_BATCH frames each."""
    from crome_runtime.vision_inputs import vision_feeds

    feeds = []
    for start in range(0, len(data.calibration), CALIBRATION_BATCH):
        chunk = data.calibration[start : start + CALIBRATION_BATCH]
        feeds.append(vision_feeds(data.batch(chunk), [s.question for s in chunk], backbone.info, backbone.qformer_tokenizer))
    return feeds
