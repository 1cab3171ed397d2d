"""benchmarks/data_efficiency.py --from-json: runs made one task at a time become one table and plot, and runs that
cannot share a table (other steps, augment or machine; the same task twice) are refused with the reason."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import data_efficiency  # noqa: E402

MACHINE = "host: x86_64 avx2"


def _run(tmp_path: Path, name: str, task: str, points: list[tuple[int, float]], augment: str = "flips",
         frozen: float = 0.0, pooled_map: bool = False) -> Path:
    result = {"command": f"python benchmarks/data_efficiency.py --tasks {task}", "machine": MACHINE,
              "date": "2026-12-06", "steps": 200, "augment": augment, "pooled_map": pooled_map,
              "tasks": {task: {"question": f"{task}?", "test_n": 500, "test_classes": {"a": 300, "b": 200},
                               "chance": 0.6, "frozen": frozen,
                               "points": [{"n": n, "accuracy": a, "train_seconds": 1.0} for n, a in points]}}}
    path = tmp_path / name
    path.write_text(json.dumps(result))
    return path


def test_from_json_merges_tasks_into_one_table(tmp_path, capsys):
    elpv = _run(tmp_path, "elpv.json", "elpv", [(25, 0.598), (500, 0.734)])
    line3 = _run(tmp_path, "line3.json", "line3", [(25, 0.77), (50, 0.81)])
    out = tmp_path / "merged.json"
    data_efficiency.main(["--from-json", str(elpv), str(line3), "--json", str(out)])
    merged = json.loads(out.read_text())
    assert set(merged["tasks"]) == {"elpv", "line3"}
    assert merged["augment"] == "flips" and "--tasks elpv" in merged["command"] and "--tasks line3" in merged["command"]
    table = capsys.readouterr().out
    assert "| N=25 | N=50 | N=500 |" in table
    assert '| elpv ("elpv?") | 500 | 60.0% | 0.0% | 59.8% | not run | 73.4% |' in table
    assert '| line3 ("line3?") | 500 | 60.0% | 0.0% | 77.0% | 81.0% | not run |' in table


def test_from_json_refuses_runs_that_cannot_share_a_table(tmp_path):
    flips = _run(tmp_path, "a.json", "elpv", [(25, 0.6)])
    plain = _run(tmp_path, "b.json", "line3", [(25, 0.7)], augment="none")
    with pytest.raises(SystemExit, match="differ in steps, augment or machine"):
        data_efficiency.main(["--from-json", str(flips), str(plain)])
    again = _run(tmp_path, "c.json", "elpv", [(25, 0.6), (50, 0.6)])
    with pytest.raises(SystemExit, match="two runs measured elpv at N=25; give one of them"):
        data_efficiency.main(["--from-json", str(flips), str(again)])
    other_test = _run(tmp_path, "d.json", "elpv", [(50, 0.6)], frozen=0.1)
    with pytest.raises(SystemExit, match="two runs of elpv differ in question, held-out set or frozen baseline"):
        data_efficiency.main(["--from-json", str(flips), str(other_test)])


def test_from_json_joins_runs_that_split_one_task_by_size(tmp_path, capsys):
    small = _run(tmp_path, "a.json", "elpv", [(50, 0.588), (25, 0.62)])
    large = _run(tmp_path, "b.json", "elpv", [(500, 0.754)])
    out = tmp_path / "merged.json"
    data_efficiency.main(["--from-json", str(large), str(small), "--json", str(out)])
    assert [p["n"] for p in json.loads(out.read_text())["tasks"]["elpv"]["points"]] == [25, 50, 500]
    assert '| elpv ("elpv?") | 500 | 60.0% | 0.0% | 62.0% | 58.8% | 75.4% |' in capsys.readouterr().out


def test_from_json_keeps_pooled_map_runs_as_their_own_series(tmp_path, capsys):
    plain = _run(tmp_path, "a.json", "elpv", [(25, 0.62), (500, 0.754)])
    mapped = _run(tmp_path, "b.json", "elpv", [(25, 0.776)], pooled_map=True)
    mapped_large = _run(tmp_path, "c.json", "elpv", [(500, 0.836)], pooled_map=True)
    out = tmp_path / "merged.json"
    data_efficiency.main(["--from-json", str(plain), str(mapped), str(mapped_large), "--json", str(out),
                          "--plot", str(tmp_path / "curve.png")])
    merged = json.loads(out.read_text())
    assert list(merged["tasks"]) == ["elpv", "elpv --pooled-map"]
    assert [p["n"] for p in merged["tasks"]["elpv --pooled-map"]["points"]] == [25, 500]
    table = capsys.readouterr().out
    assert '| elpv ("elpv?") | 500 | 60.0% | 0.0% | 62.0% | 75.4% |' in table
    assert '| elpv --pooled-map ("elpv?") | 500 | 60.0% | 0.0% | 77.6% | 83.6% |' in table
    if data_efficiency.pyplot() is not None:
        assert (tmp_path / "curve.png").stat().st_size > 1000


def test_running_needs_a_work_directory(capsys):
    with pytest.raises(SystemExit):
        data_efficiency.main(["--tasks", "elpv"])
    assert "--work is required" in capsys.readouterr().err


def test_results_section_replaced_at_its_own_level(tmp_path):
    """RESULTS.md keeps this table as a subsection: replacing it keeps the subsections and sections after it."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## A real eye\n\n"
                       "### Data efficiency: adapter-only accuracy against training-set size\n\nold table\n\n"
                       "### Which eye map\n\nkept 1\n\n## Serve\n\nkept 2\n")
    elpv = _run(tmp_path, "elpv.json", "elpv", [(25, 0.598)])
    data_efficiency.main(["--from-json", str(elpv), "--results", str(results)])
    text = results.read_text()
    assert "old table" not in text and "| 59.8% |" in text
    assert "\n### Data efficiency: adapter-only accuracy against training-set size\n" in text
    assert "\n## Data efficiency" not in text
    assert text.index("59.8%") < text.index("### Which eye map\n\nkept 1") < text.index("## Serve\n\nkept 2")
