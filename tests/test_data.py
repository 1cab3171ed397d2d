"""Datasets: the JSONL / data.jsonl / class-folder layouts, every bad-input case (with the line or image
named, nothing written), the deterministic split by image, and pixels through the runtime's preprocessing."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tests.support.datasets import synth_dataset

from crome_edge.data import check_images, load_dataset, split_dataset
from crome_edge.errors import CromeError

COLOURS = {"red": (40, 40, 220), "green": (40, 200, 40), "blue": (220, 80, 30)}


def write_colour_dataset(root: Path, n: int = 24, seed: int = 0, size: int = 32) -> Path:
    """A small, learnable JSONL dataset: a coloured square on grey; 'what colour is the part?' -> colour."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        image = np.full((size, size, 3), 110, np.uint8)
        x, y = rng.integers(2, size // 2, 2)
        image[y : y + size // 3, x : x + size // 3] = COLOURS[name]
        image = np.clip(image.astype(int) + rng.integers(-15, 16, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image)
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "question": "what colour is the part?", "answer": name}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def test_a_synthetic_dataset_directory_loads(tmp_path):
    synth_dataset(tmp_path / "line3", n=6)
    dataset = load_dataset(tmp_path / "line3")
    assert dataset.layout == "jsonl" and len(dataset) == 6 and dataset.source == tmp_path / "line3" / "data.jsonl"
    assert {s.question for s in dataset.samples} == {"Which bin does this part go to?"}
    check_images(dataset.samples)
    pretrain = load_dataset(synth_dataset(tmp_path / "pretrain", n=2, task="pretrain"))
    assert len(pretrain) == 10 and len(split_dataset(pretrain.samples, 0.5, 0)[1]) == 5  # 5 questions, 1 image


def test_jsonl_paths_are_relative_to_the_file_and_blank_lines_are_skipped(tmp_path):
    data = write_colour_dataset(tmp_path, n=4)
    data.write_text(data.read_text().replace("\n", "\n\n", 1))
    dataset = load_dataset(data)
    assert dataset.layout == "jsonl" and len(dataset) == 4
    assert dataset.samples[0].image == tmp_path / "images" / "000.png"
    assert dataset.samples[0].origin == "data.jsonl line 1" and dataset.samples[1].origin == "data.jsonl line 3"
    assert load_dataset(tmp_path).samples == dataset.samples  # a directory holding data.jsonl
    check_images(dataset.samples)


def test_default_question_fills_lines_without_one(tmp_path):
    write_colour_dataset(tmp_path, n=2)
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "images/000.png", "answer": "red"}) + "\n")
    with pytest.raises(CromeError, match=r"q.jsonl line 1 has no 'question' \(or pass --question\)"):
        load_dataset(tmp_path / "q.jsonl")
    assert load_dataset(tmp_path / "q.jsonl", question="colour?").samples[0].question == "colour?"


def test_class_folder_layout_needs_a_question(tmp_path):
    for answer in ("ok", "defective"):
        (tmp_path / answer).mkdir()
        cv2.imwrite(str(tmp_path / answer / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "ok" / "notes.txt").write_text("not an image suffix: ignored")
    with pytest.raises(CromeError, match="pass the question to ask with --question"):
        load_dataset(tmp_path)
    dataset = load_dataset(tmp_path, question="is the part ok?")
    assert dataset.layout == "folders"
    assert [(s.answer, s.image.name, s.question) for s in dataset.samples] == [
        ("defective", "a.png", "is the part ok?"), ("ok", "a.png", "is the part ok?")
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no samples"),
        ("\n\n", "holds no samples"),
        ('{"image": "a.png", "question": "q"}\n', r"line 1 has no 'answer'"),
        ('{"image": "a.png", "question": "q", "answer": "x"}\n{"image": "b.png", "question": "q"}\n', r"line 2 has no 'answer'"),
        ('{"question": "q", "answer": "x"}\n', r"line 1 has no 'image'"),
        ("not json\n", r"line 1 is not valid JSON"),
        ('["a.png", "q", "x"]\n', r"line 1 is not a JSON object"),
        ('{"image": "a.png", "question": "q", "answer": ["x"]}\n', r"line 1: 'answer' must be a string"),
        ('{"image": "a.png", "question": "q", "answer": "  "}\n', r"line 1: 'answer' is empty"),
    ],
)
def test_bad_jsonl_says_which_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(CromeError, match=message):
        load_dataset(tmp_path / "d.jsonl")


def test_missing_unreadable_and_empty_datasets(tmp_path):
    with pytest.raises(CromeError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CromeError, match="cannot read dataset"):
        load_dataset(tmp_path / "binary.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CromeError, match="no data.jsonl and no <answer>/ folders"):
        load_dataset(tmp_path / "empty")


def test_missing_and_non_images_are_named(tmp_path):
    data = write_colour_dataset(tmp_path, n=3)
    (tmp_path / "images" / "001.png").unlink()
    (tmp_path / "images" / "002.png").write_text("this is not a png")
    samples = load_dataset(data).samples
    with pytest.raises(CromeError) as error:
        check_images(samples)
    message = str(error.value)
    assert "2 bad image(s)" in message
    assert "001.png (data.jsonl line 2) not found" in message
    assert "002.png (data.jsonl line 3) is not a usable image" in message
    assert "000.png" not in message


def test_split_is_deterministic_disjoint_and_by_image(tmp_path):
    samples = load_dataset(write_colour_dataset(tmp_path, n=20)).samples
    # a second question about every image: both must land on the same side
    samples = samples + [type(s)(s.image, "is it round?", "no", s.origin) for s in samples]
    train, val = split_dataset(samples, 0.25, seed=3)
    assert split_dataset(samples, 0.25, seed=3) == (train, val)
    assert split_dataset(list(reversed(samples)), 0.25, seed=3)[1] == list(reversed(val))  # order-independent choice
    assert len({s.image for s in val}) == 5 and len(train) + len(val) == len(samples)
    assert not {s.image for s in train} & {s.image for s in val}
    assert split_dataset(samples, 0.25, seed=4)[1] != val
    assert split_dataset(samples, 0.0, seed=3) == (samples, [])
    assert len({s.image for s in split_dataset(samples, 0.01, seed=0)[1]}) == 1  # at least one image held out


def test_split_rejects_bad_fractions_and_single_images(tmp_path):
    samples = load_dataset(write_colour_dataset(tmp_path, n=2)).samples
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(CromeError, match="--val-fraction must be in"):
            split_dataset(samples, fraction, 0)
    with pytest.raises(CromeError, match="cannot hold out a validation split from 1 image"):
        split_dataset(samples[:1], 0.5, 0)


def test_pixels_are_the_runtime_preprocessing(tmp_path):
    import torch

    from crome_edge.data.pixels import PixelStore
    from crome_runtime.preprocess import load_image, preprocess_image

    samples = load_dataset(write_colour_dataset(tmp_path, n=3)).samples
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for budget in (1 << 30, 0):  # cached, and re-read on demand
        store = PixelStore(16, mean, std, memory_budget=budget)
        store.prepare(samples)
        batch = store.batch(samples)
        assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32
        expected = preprocess_image(load_image(samples[1].image), 16, mean, std)
        assert np.array_equal(batch[1].numpy(), expected)
