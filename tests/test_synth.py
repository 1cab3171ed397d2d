"""The synthetic conveyor world: determinism, label balance, visible defects, Q&A, line 3, datasets, CLI."""
import hashlib
import json
from collections import Counter
from itertools import combinations

import cv2
import numpy as np
import pytest

from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.synth import world
from crome_edge.synth.line3 import LINE3_ANSWERS, LINE3_QUESTION, line3_answer, line3_split
from crome_edge.synth.line5 import LINE5_ANSWERS, LINE5_QUESTION, line5_answer
from crome_edge.synth.qa import ANSWERS, PRETRAIN_QUESTIONS, Q_CAPTION, answer, caption, qa_pairs
from crome_edge.synth.samples import iter_samples, iter_split
from crome_edge.synth.splits import SEED_RANGES, split_seeds
from crome_edge.synth.world import (
    COLOUR_NAMES, DEFECTS, KINDS, LEAVING_SLIVER, NO_DEFECT, NO_PART, Geometry, SceneInfo, render_scene,
)

N_SCENES = 400


@pytest.fixture(scope="module")
def scenes():
    """(seed, image, info) of seeds 0..N_SCENES-1."""
    return [(seed, *render_scene(seed)) for seed in range(N_SCENES)]


def _scene(kind="gear", colour="red", defect=NO_DEFECT):
    return SceneInfo(kind, colour, defect, Geometry(64.0, 64.0, 30.0, 0.0), seed=1)


# --- world -------------------------------------------------------------------------------------------


def test_render_is_deterministic_per_seed_and_sized():
    a, info_a = render_scene(123)
    b, info_b = render_scene(123)
    c, _ = render_scene(124)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes() and info_a == info_b
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5  # another seed is another scene
    big, info_big = render_scene(123, size=192)
    assert big.shape == (192, 192, 3)
    g = info_big.geometry
    assert g.radius <= g.cx <= 192 - g.radius and g.radius <= g.cy <= 192 - g.radius  # part inside
    with pytest.raises(ValueError):
        render_scene(1, size=16)


def test_label_balance(scenes):
    everything = [info for _, _, info in scenes]
    absent = sum(not info.present for info in everything) / len(everything)
    assert 0.055 <= absent <= 0.145  # NO_PART_RATE 0.1, +-3 sd at n=400
    infos = [info for info in everything if info.present]
    defective = sum(info.defective for info in infos) / len(infos)
    assert 0.32 <= defective <= 0.48  # DEFECT_RATE 0.4, +-3 sd at n=360
    kinds, colours, defects = Counter(i.kind for i in infos), Counter(i.colour for i in infos), Counter(i.defect for i in infos)
    n = len(infos)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 0.6 * n / len(KINDS)
    assert set(colours) == set(COLOUR_NAMES) and min(colours.values()) >= 0.6 * n / len(COLOUR_NAMES)
    assert set(defects) == {*DEFECTS, NO_DEFECT} and min(defects[d] for d in DEFECTS) >= 20


def test_no_part_frames(scenes):
    """An empty belt or a part leaving the frame (a sliver in view); every conveyor question answers "no part",
    and frames with a part render exactly as the same seed did before no-part frames existed."""
    absent = [info for _, _, info in scenes if not info.present]
    assert all(info.kind == info.colour == NO_PART and not info.defective for info in absent)
    leaving = 0
    for info in absent:
        assert {answer(q, info) for q in PRETRAIN_QUESTIONS} == {NO_PART}
        assert line3_answer(info) == line5_answer(info) == NO_PART
        g = info.geometry
        beyond = g.radius * (1 - LEAVING_SLIVER)
        outside = [abs(c - edge) for c in (g.cx, g.cy) for edge in (-beyond, 127 + beyond)]
        if min(outside) < 1e-3:  # leaving: the centre sits beyond an edge, a sliver in view
            leaving += 1
        else:  # empty belt: the part was sampled inside the frame but not drawn
            assert g.radius <= g.cx <= 128 - g.radius and g.radius <= g.cy <= 128 - g.radius
    assert 0 < leaving < len(absent)  # both kinds occur
    # seeds 0-3 and 5 hold a part and keep the exact bytes they had before no-part frames existed; 4 has none
    pinned = {0: "d2bc218fb26198e0", 3: "2d964cc723f7f2c6", 5: "a496e8285d5a92e5"}
    for seed, digest in pinned.items():
        image, info = scenes[seed][1:]
        assert info.present and hashlib.sha256(image.tobytes()).hexdigest()[:16] == digest
    assert not scenes[4][2].present


def test_every_defect_is_visible_in_the_final_frame(scenes):
    """Same scene with and without its defect: the difference is substantial and lies on the part."""
    seen = set()
    for seed, image, info in scenes:
        if not info.defective:
            continue
        clean, clean_info = render_scene(seed, draw_defect=False)
        assert clean_info == info
        diff = np.abs(image.astype(np.int16) - clean.astype(np.int16)).sum(axis=2)  # (H, W)
        changed = diff >= 60
        g = info.geometry
        yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
        near_part = (xx - g.cx) ** 2 + (yy - g.cy) ** 2 <= (g.radius + 3) ** 2
        # the generator demands 45 px at radius 25 (x radius²) before blur, light and noise; the
        # final frames measured 44.7 px at the least over 400 defective scenes
        min_pixels = 35 * (g.radius / 25) ** 2
        assert changed.sum() >= min_pixels, (seed, info, int(changed.sum()), min_pixels)
        assert changed[~near_part].sum() == 0, (seed, info)  # the defect is drawn on the part only
        seen.add((info.kind, info.defect))
    assert seen == {(k, d) for k in KINDS for d in DEFECTS}  # incl. a dented gear, a cracked bolt


def test_visibility_check_rejects_an_invisible_defect():
    rng = np.random.default_rng(0)
    part = world.make_part(rng, (30, 30), ("washer", "blue", NO_DEFECT))
    args = (part.clean_sprite, part.clean_mask, part.sprite, part.mask)
    assert world.visible_defect_pixels(*args) == 0 and not world.defect_is_visible(*args, part.radius)
    faint = part.clean_sprite.copy()
    faint[part.clean_mask > 0] += 5  # a defect too faint to see is not accepted
    assert not world.defect_is_visible(part.clean_sprite, part.clean_mask, faint, part.mask, part.radius)


def test_every_label_combination_can_be_drawn():
    """make_part terminates with a visible defect for every kind x colour x defect (a purple gear with a
    missing hole once looped forever)."""
    for seed in range(2):
        rng = np.random.default_rng(seed)
        for kind in KINDS:
            for colour in COLOUR_NAMES:
                for defect in (*DEFECTS, NO_DEFECT):
                    part = world.make_part(rng, (25.6, 41.0), (kind, colour, defect))
                    assert (part.kind, part.colour, part.defect) == (kind, colour, defect)
                    visible = world.visible_defect_pixels(part.clean_sprite, part.clean_mask, part.sprite, part.mask)
                    assert (visible > 0) == (defect != NO_DEFECT)


def test_scene_info_round_trips_json(scenes):
    info = scenes[7][2]
    assert SceneInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


# --- Q&A and line 3 ---------------------------------------------------------------------------------------


def test_pretraining_answers_and_caption():
    scene = _scene("gear", "red", "crack")
    assert qa_pairs(scene) == [
        ("What part is this?", "gear"),
        ("What colour is the part?", "red"),
        ("Is the part defective?", "yes"),
        ("What defect does the part have?", "crack"),
        ("Describe the part.", "a red gear with a crack"),
    ]
    assert caption(_scene("washer", "orange", "missing hole")) == "an orange washer with a missing hole"
    assert caption(_scene("hex nut", "blue")) == "a blue hex nut with no defect"
    assert answer("Is the part defective?", _scene()) == "no" and answer("What defect does the part have?", _scene()) == "none"
    with pytest.raises(ValueError):
        answer("How old is the part?", scene)


def test_rendered_answers_come_from_the_vocabulary(scenes):
    for _, _, info in scenes[:100]:
        for question, reply in qa_pairs(info):
            assert question == Q_CAPTION or reply in ANSWERS[question]
        assert line3_answer(info) in LINE3_ANSWERS and line5_answer(info) in LINE5_ANSWERS


@pytest.mark.parametrize(
    "rule, kind, colour, defect, expected",
    [
        (line3_answer, "gear", "red", "dent", "scrap"),
        (line3_answer, "bolt", "blue", "scratch", "scrap"),
        (line3_answer, "hex nut", "orange", NO_DEFECT, "bin a"),
        (line3_answer, "washer", "yellow", NO_DEFECT, "bin a"),
        (line3_answer, "gear", "purple", NO_DEFECT, "bin b"),
        (line3_answer, "washer", "green", NO_DEFECT, "bin b"),
        (line3_answer, "bolt", "red", NO_DEFECT, "bin c"),
        (line3_answer, "bracket", "blue", NO_DEFECT, "bin c"),
        (line5_answer, "gear", "blue", "crack", "reject: defect"),
        (line5_answer, "bolt", "green", "dent", "reject: defect"),
        (line5_answer, "washer", "blue", "missing hole", "reject: defect"),
        (line5_answer, "gear", "yellow", "scratch", "pass"),  # a scratch is cosmetic on line 5
        (line5_answer, "bolt", "blue", NO_DEFECT, "pass"),
        (line5_answer, "hex nut", "blue", "scratch", "reject: wrong part"),
        (line5_answer, "bracket", "green", NO_DEFECT, "reject: wrong part"),
        (line5_answer, "washer", "red", NO_DEFECT, "reject: wrong part"),
        (line5_answer, "gear", "red", NO_DEFECT, "reject: wrong colour"),
        (line5_answer, "bolt", "purple", "scratch", "reject: wrong colour"),
    ],
)
def test_line_rules(rule, kind, colour, defect, expected):
    assert rule(_scene(kind, colour, defect)) == expected


@pytest.mark.parametrize("rule, expected", [
    (line3_answer, {"no part": 0.10, "scrap": 0.36, "bin a": 0.16, "bin b": 0.16, "bin c": 0.22}),
    (line5_answer, {"no part": 0.10, "reject: defect": 0.27, "reject: wrong part": 0.38, "reject: wrong colour": 0.13,
                    "pass": 0.13}),
])
def test_line_answer_balance(scenes, rule, expected):
    counts = Counter(rule(info) for _, _, info in scenes)
    assert set(counts) == set(expected)
    for answer_, share in expected.items():  # the rule's shares under the world's label distribution, ±0.07
        assert abs(counts[answer_] / N_SCENES - share) <= 0.07, (answer_, counts[answer_] / N_SCENES)


def test_one_line_rule_does_not_give_the_other(scenes):
    pairs = {(line3_answer(info), line5_answer(info)) for _, _, info in scenes}
    assert all(len({b for a, b in pairs if a == bin_}) >= 2 for bin_ in LINE3_ANSWERS if bin_ != NO_PART)


def test_split_seed_ranges_are_disjoint_and_checked():
    ranges = [range(first, first + n) for first, n in SEED_RANGES.values()]
    for a, b in combinations(ranges, 2):
        assert a.stop <= b.start or b.stop <= a.start
    assert all(r.stop <= 50_000_000 for r in ranges)  # below the smol stage-A and export seed bases
    assert split_seeds("line3", "val", 3, start=10) == range(21_000_010, 21_000_013)
    with pytest.raises(CromeError, match="runs past its end"):
        split_seeds("line3", "test", 2, start=999_999)
    with pytest.raises(CromeError, match="unknown task"):
        split_seeds("line4", "train", 1)


def test_in_memory_samples():
    pretrain = list(iter_samples("pretrain", range(5, 8)))
    assert len(pretrain) == 3 * len(PRETRAIN_QUESTIONS)
    first = pretrain[: len(PRETRAIN_QUESTIONS)]
    assert [s.question for s in first] == list(PRETRAIN_QUESTIONS)
    assert all(s.image is first[0].image for s in first)  # one render per frame
    image, info = render_scene(5)
    assert first[0].image.tobytes() == image.tobytes() and first[0].scene == info
    one = list(iter_samples("pretrain", range(100, 110), questions="one"))
    assert len(one) == 10 and {s.question for s in one} == set(PRETRAIN_QUESTIONS)
    line3 = list(line3_split("val", 4))
    assert [s.scene.seed for s in line3] == list(split_seeds("line3", "val", 4))
    assert all(s.question == LINE3_QUESTION and s.answer == line3_answer(s.scene) for s in line3)
    assert [s.scene.seed for s in iter_split("pretrain", "test", 2, start=5)] == [11_000_005] * 5 + [11_000_006] * 5
    line5 = list(iter_split("line5", "test", 3))
    assert [s.scene.seed for s in line5] == [32_000_000, 32_000_001, 32_000_002]
    assert all(s.question == LINE5_QUESTION and s.answer == line5_answer(s.scene) for s in line5)


# --- dataset writer and `crome-edge data synth` ---------------------------------------------------------------


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_a_valid_line3_dataset(tmp_path, capsys):
    out = tmp_path / "line3"
    assert main(["data", "synth", "--out", str(out), "--n", "12", "--task", "line3", "--split", "val", "--seed", "3"]) == 0
    assert "wrote 12 frames" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line3"]  # no temp dirs left
    data, scenes = _lines(out / "data.jsonl"), _lines(out / "scenes.jsonl")
    assert len(data) == 12 and len(scenes) == 12 and len(list((out / "images").iterdir())) == 12
    info = json.loads((out / "dataset.json").read_text())
    assert info["first_seed"] == 21_000_003 and info["frames"] == 12 and sum(info["answers"].values()) == 12
    for row, scene in zip(data, scenes):
        assert row["image"] == scene["image"] and row["question"] == LINE3_QUESTION
        image = cv2.imread(str(out / row["image"]))
        expected, truth = render_scene(scene["seed"])
        assert image.tobytes() == expected.tobytes()  # PNG is lossless
        assert SceneInfo.from_dict({k: v for k, v in scene.items() if k != "image"}) == truth
        assert row["answer"] == line3_answer(truth)
    from crome_edge.data.dataset import load_dataset  # the reader training uses

    assert len(load_dataset(out)) == 12


def test_cli_pretrain_dataset_has_one_line_per_question(tmp_path):
    out = tmp_path / "pre"
    assert main(["data", "synth", "--out", str(out), "--n", "3", "--size", "64"]) == 0
    data = _lines(out / "data.jsonl")
    assert len(data) == 3 * len(PRETRAIN_QUESTIONS)
    assert [d["question"] for d in data[:5]] == list(PRETRAIN_QUESTIONS)
    assert cv2.imread(str(out / data[0]["image"])).shape == (64, 64, 3)
    assert main(["data", "synth", "--out", str(tmp_path / "one"), "--n", "4", "--questions", "one"]) == 0
    assert len(_lines(tmp_path / "one" / "data.jsonl")) == 4


def test_cli_refuses_bad_targets(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["data", "synth", "--out", str(out), "--n", "2"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["data", "synth", "--out", str(tmp_path / "missing" / "ds"), "--n", "2"]) == 2
    assert "parent directory" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--n", "2", "--seed", "10000000"]) == 2
    assert "runs past its end" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--n", "0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # --force replaces only a synthetic dataset, never another directory; an empty directory is fine without it
    assert main(["data", "synth", "--out", str(out), "--n", "2", "--force"]) == 2
    assert "not one (it has no dataset.json)" in capsys.readouterr().err and (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    assert main(["data", "synth", "--out", str(out), "--n", "2"]) == 0
    assert main(["data", "synth", "--out", str(out), "--n", "3", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "dataset.json", "images", "scenes.jsonl"]
    (tmp_path / "empty").mkdir()
    assert main(["data", "synth", "--out", str(tmp_path / "empty"), "--n", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from crome_edge.synth import dataset_writer

    calls = []

    def failing_imwrite(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return cv2.imwrite(path, image)

    monkeypatch.setattr(dataset_writer.cv2, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        dataset_writer.write_dataset(dataset_writer.SynthConfig(out=str(tmp_path / "ds"), n=5))
    assert list(tmp_path.iterdir()) == []
