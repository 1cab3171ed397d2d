"""benchmarks/routed_accuracy.py from a clean checkout, short, on the tiny backbone: line3, line5 and a line3 adapter
trained with --replay, exported (fp32) into a bundle of both line adapters, two single-adapter bundles and a replay
bundle, each served by a real `crome-edge serve` and asked through the official `openai` client, with a `bundle
add --replace` + reload in the middle of the routed pass. tiny's answers are not meant to be right; what is
checked is what routing promises: no request lost, every answer from the adapter its prompt routes to, the
pretraining questions answered exactly as the frozen backbone answers them, and the routed line accuracy equal to
the single-adapter bundle's (fp32: the same graphs, so the same answers)."""
import json
import sys
from pathlib import Path

import pytest
from tests.support.datasets import synth_dataset

from crome_cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TRAIN = ["--backbone", "tiny", "--steps", "3", "--batch-size", "6", "--rank", "8", "--val-fraction", "0.25",
         "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("routed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROME_EDGE_CACHE", str(root / "cache"))
        patch.setenv("OMP_NUM_THREADS", "1")
        adapters = {}
        for name, task, extra in (("line3", "line3", []), ("line5", "line5", []), ("replay", "line3", ["--replay", "10"]),
                                  ("line5b", "line5", ["--seed", "1"])):
            data = synth_dataset(root / f"{name}-data", n=16, task=task)
            (root / name).mkdir()
            adapters[name] = root / name / f"{task}.safetensors"
            assert main(["train", "--data", str(data), "--out", str(adapters[name]), *TRAIN, *extra]) == 0
        export = ["--precision", "fp32", "--threads", "1", "--eval-limit", "8"]
        out = {name: root / f"{name}.bundle" for name in ("both", "line3", "line5", "replay")}
        assert main(["export", "--adapter", str(adapters["line3"]), "--adapter", str(adapters["line5"]),
                     "--out", str(out["both"]), *export]) == 0
        for name in ("line3", "line5", "replay"):
            assert main(["export", "--adapter", str(adapters[name]), "--out", str(out[name]), *export]) == 0
        yield {"root": root, "adapters": adapters, **out}


def test_routed_accuracy_short_loses_nothing_and_routes_every_answer(bundles, tmp_path, monkeypatch):
    import routed_accuracy

    monkeypatch.setenv("CROME_EDGE_CACHE", str(bundles["root"] / "cache"))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Another section\n\nkept\n")
    argv = ["--bundle", str(bundles["both"]), "--single", f"line3={bundles['line3']}",
            "--single", f"line5={bundles['line5']}", "--replay", f"line3={bundles['replay']}", "--n", "6",
            "--pretrain-n", "10", "--threads", "1", "--clients", "2", "--swap", f"line5={bundles['adapters']['line5b']}",
            "--swap-after", "0", "--swap-eval-limit", "4", "--json", str(tmp_path / "r.json"), "--results", str(results)]
    assert routed_accuracy.main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"routed", "frozen", "line3 everywhere", "line5 everywhere", "routed, line5 hot-swapped",
                         "single line3", "single line5", "replay"}
    assert all(score["lost"] == 0 for row in rows.values() for score in row.values())
    assert {f: s["misrouted"] for f, s in rows["routed"].items()} == {"line3": 0, "line5": 0, "pretrain": 0}
    assert result["routed_pretrain_answers_identical_to_frozen"] is True
    assert rows["routed"]["pretrain"]["accuracy"] == rows["frozen"]["pretrain"]["accuracy"]
    assert set(rows["frozen"]) == {"line3", "line5", "pretrain"}
    for name in ("line3", "line5"):
        assert rows["routed"][name]["n"] == rows[f"single {name}"][name]["n"] == 6
        assert rows["routed"][name]["correct"] == rows[f"single {name}"][name]["correct"]
    assert set(rows["replay"]) == {"line3", "pretrain"} and rows["replay"]["pretrain"]["n"] == 10
    swap = result["swap"]
    assert swap["bundle_add_rc"] == 0 and swap["reload"]["status"] == 200
    assert swap["reload"]["replaced"] == ["line5"] and swap["reload"]["adapters"] == ["line3", "line5"]
    assert rows["routed, line5 hot-swapped"]["line5"]["misrouted"] == 0
    text = results.read_text()
    assert "## Another section\n\nkept" in text and routed_accuracy.HEADING in text and "load average" in text
    assert sorted(p.name for p in bundles["both"].parent.iterdir() if p.name.startswith("both")) == ["both.bundle"]
