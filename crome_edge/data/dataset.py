"""Reading a dataset of (image, question, answer) samples, in one of two layouts, with clear errors.

Layouts (`load_dataset(path, question=None)`):

1. JSONL — `path` is a `.jsonl` file, or a directory holding `data.jsonl` (what `crome-edge data synth`
   writes). One JSON object per line: `{"image": "images/0001.png", "question": "...", "answer": "..."}`.
   `image` is relative to the JSONL file's directory (or absolute). `question` may be left out when a
   default question is given (`--question`). Blank lines are skipped.
2. Class folders — `path` is a directory of `path/<answer>/*.png|.jpg|...`; the folder name is the answer
   and every image is asked the one `--question`.

Torch-free and cheap: images are only checked (`check_images`, which decodes each one with the runtime's
loader) or turned into tensors (`crome_edge.data.pixels`) when a command needs them. Every problem is a
`CromeError` naming the file, the line or the image, raised before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from crome_edge.errors import CromeError
from crome_runtime import input_files

JSONL_NAME = "data.jsonl"  # the file looked for inside a dataset directory
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LAYOUT_HELP = (
    "a dataset is a JSONL file of {\"image\", \"question\", \"answer\"} lines (image paths relative to the "
    f"file), a directory holding {JSONL_NAME}, or a directory of <answer>/ folders of images with --question"
)


@dataclass(frozen=True)
class Sample:
    image: Path  # absolute
    question: str
    answer: str
    origin: str = ""  # where it came from, for messages: "data.jsonl line 7" or "defective/0003.png"


@dataclass
class Dataset:
    source: Path  # absolute path of the JSONL file or the class-folder directory
    layout: str  # "jsonl" | "folders"
    samples: list[Sample] = field(default_factory=list)
    question: str | None = None  # the default question it was read with, if any

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """sha256 over every sample's image path, question and answer (not the pixels)."""
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(json.dumps([str(s.image), s.question, s.answer]).encode())
        return digest.hexdigest()


def load_dataset(path: str | Path, question: str | None = None) -> Dataset:
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise CromeError(f"dataset {path} does not exist; {LAYOUT_HELP}")
    if path.is_dir():
        if (path / JSONL_NAME).is_file():
            dataset = _read_jsonl(path / JSONL_NAME, question)
        else:
            dataset = _read_folders(path, question)
    else:
        dataset = _read_jsonl(path, question)
    if not dataset.samples:
        raise CromeError(f"dataset {dataset.source} holds no samples; {LAYOUT_HELP}")
    return dataset


def _read_jsonl(path: Path, default_question: str | None) -> Dataset:
    samples = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = input_files.loads(line, "the line")
        except json.JSONDecodeError as error:
            raise CromeError(f"{path} line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise CromeError(f"{path} line {number} is not a JSON object with image/question/answer")
        image = _text_field(record, "image", path, number)
        answer = _text_field(record, "answer", path, number)
        if "question" in record or default_question is None:
            question = _text_field(record, "question", path, number, hint=" (or pass --question)")
        else:
            question = default_question
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        samples.append(Sample(image_path, question, answer, where))
    return Dataset(path, "jsonl", samples, default_question)


def _lines(path: Path):
    """(number, text) of every line, read one bounded line at a time (MAX_LINE_BYTES), each decoded as UTF-8."""
    from crome_runtime.limits import MAX_LINE_BYTES

    try:
        with open(path, "rb") as f:
            number = 0
            while raw := f.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise CromeError(f"{path} line {number} is over the {MAX_LINE_BYTES >> 20} MiB line limit; a "
                                     "dataset line is one short {image, question, answer} object")
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise CromeError(f"cannot read dataset {path}: line {number} is not UTF-8 text (save it as UTF-8); "
                                     f"{LAYOUT_HELP}") from None
    except OSError as error:
        raise CromeError(f"cannot read dataset {path} ({error.strerror or error}); {LAYOUT_HELP}") from None


def _text_field(record: dict, key: str, path: Path, number: int, hint: str = "") -> str:
    from crome_runtime.limits import TextError, check_text

    if key not in record:
        raise CromeError(f"{path} line {number} has no {key!r}{hint}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CromeError(f"{path} line {number}: {key!r} must be a string, not {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise CromeError(f"{path} line {number}: {key!r} is empty")
    if "\x00" in value:
        raise CromeError(f"{path} line {number}: {key!r} holds a NUL character")
    try:
        check_text(value, repr(key))  # length and UTF-8: crome_runtime.limits, the rule every command applies
    except TextError as error:
        raise CromeError(f"{path} line {number}: {error}") from None
    return value


def _read_folders(path: Path, question: str | None) -> Dataset:
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for folder in folders:
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                samples.append(Sample(image, question or "", folder.name, f"{folder.name}/{image.name}"))
    if not samples:
        raise CromeError(f"{path} has no {JSONL_NAME} and no <answer>/ folders of images; {LAYOUT_HELP}")
    if not question:
        raise CromeError(
            f"{path} is a class-folder dataset (answers are the folder names): pass the question to ask "
            "with --question"
        )
    return Dataset(path, "folders", samples, question)


def check_images(samples: list[Sample]) -> None:
    """Decodes every distinct image once; raises a CromeError naming the bad ones."""
    decode_images(samples, lambda path, image: None)


def decode_images(samples: list[Sample], consume, limit: int = 5) -> None:
    """Calls `consume(path, bgr_uint8)` for every distinct image, then raises one CromeError listing up
    to `limit` images that are missing or not images (with their line/file), if any."""
    from crome_runtime.preprocess import ImageError, load_image

    problems: list[str] = []
    count = 0
    for image, origin in _distinct_images(samples):
        if not os.path.lexists(image):
            problem = f"image {str(image)[:300]} ({origin}) not found"
        else:
            try:
                consume(image, load_image(image))  # ImageError: not a regular file, not an image, too large
                continue
            except ImageError as error:
                problem = f"image {str(image)[:300]} ({origin}) is not a usable image: {_reason(error, image)}"
        count += 1
        if len(problems) < limit:
            problems.append(problem)
    if problems:
        more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
        raise CromeError(f"{count} bad image(s) in the dataset:\n  " + "\n  ".join(problems) + more)


def _reason(error: Exception, image: Path) -> str:
    """The loader's message without its leading path (the problem line names the image already)."""
    text = str(error)
    prefix = f"{image}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _distinct_images(samples: list[Sample]) -> list[tuple[Path, str]]:
    seen: dict[Path, str] = {}
    for s in samples:
        seen.setdefault(s.image, s.origin)
    return list(seen.items())
