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
from dataclasses import dataclass, field
from pathlib import Path

from crome_edge.errors import CromeError

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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CromeError(f"cannot read dataset {path} ({error}); {LAYOUT_HELP}") from None
    samples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
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


def _text_field(record: dict, key: str, path: Path, number: int, hint: str = "") -> str:
    if key not in record:
        raise CromeError(f"{path} line {number} has no {key!r}{hint}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CromeError(f"{path} line {number}: {key!r} must be a string, not {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise CromeError(f"{path} line {number}: {key!r} is empty")
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
        if not image.is_file():
            problem = f"image {image} ({origin}) not found"
        else:
            try:
                consume(image, load_image(image))
                continue
            except ImageError as error:
                problem = f"image {image} ({origin}) is not a usable image: {error}"
        count += 1
        if len(problems) < limit:
            problems.append(problem)
    if problems:
        more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
        raise CromeError(f"{count} bad image(s) in the dataset:\n  " + "\n  ".join(problems) + more)


def _distinct_images(samples: list[Sample]) -> list[tuple[Path, str]]:
    seen: dict[Path, str] = {}
    for s in samples:
        seen.setdefault(s.image, s.origin)
    return list(seen.items())
