"""The latency benchmark scripts run from a clean checkout: each in a short mode on the tiny bundle (with a
gated weight-only Q8_0 blocks file, so the C decode path is measured), writing JSON, their RESULTS.md section
and (with matplotlib) a PNG. tiny has no GGUF, so the llama.cpp column is skipped with its reason, as in CI
where llama-cpp-python is not installed. No timing is asserted: the numbers are benchmark output only."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tests.support.bundles import with_q8_blocks
from tests.support.bundles import copy_bundle, tiny_bundle, torch_threads

pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def no_settle(monkeypatch):
    import bench_decode

    monkeypatch.setattr(bench_decode, "SETTLE_S", 0.0)  # the idle between timed runs only matters for timing


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_backbone):
    with torch_threads(1):
        paths = tiny_bundle(tmp_path_factory)
    target = copy_bundle(paths["bundle"], tmp_path_factory.mktemp("bench") / "gated")
    return with_q8_blocks({"gate": "passed"}, tiny_backbone, target)


def _outputs(tmp_path, name):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Another section\n\nkept\n")
    return ["--json", str(tmp_path / f"{name}.json"), "--results", str(results), "--plot", str(tmp_path / f"{name}.png")]


def _check(tmp_path, name, heading):
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Another section\n\nkept" in text and heading in text and "load average" in text
    assert (tmp_path / f"{name}.png").is_file() == HAS_MPL
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_bench_decode_short(bundle, tmp_path):
    import bench_decode

    with torch_threads(1):
        assert bench_decode.main([str(bundle), "--threads", "2", "--runs", "1", "--warmup", "1",
                                  "--new-tokens", "3", "--bandwidth-mb", "16", *_outputs(tmp_path, "decode")]) == 0
    result = _check(tmp_path, "decode", bench_decode.SECTION)
    for run in result["runs"]:
        assert run["skipped"] == {"llama.cpp": "no GGUF for this bundle's backbone"}
        assert set(run["columns"]) == {"ours, C path", "ours, ONNX fp32", "PyTorch eager"}
        assert run["read_bandwidth_gbs"] > 0 and run["columns"]["ours, ONNX fp32"]["tokens_equal_onnx_fp32"]
        assert run["columns"]["ours, C path"]["bytes_per_token"] > 0
        for row in run["columns"].values():  # a whole answer is its prefill and its steps, run by run
            assert row["answer_ms_median"] >= row["prefill_ms_median"] > 0


def test_bench_scaling_short(bundle, tmp_path):
    import bench_scaling

    assert bench_scaling.main([str(bundle), "--threads", "1", "--runs", "1", "--warmup", "0", "--prefix-lengths",
                               "4", "40", "--new-tokens", "2", "5", *_outputs(tmp_path, "scaling")]) == 0
    run = _check(tmp_path, "scaling", bench_scaling.SECTION)["runs"][0]
    assert set(run["by_prefix_length"]["ours, C path"]) == {"4", "40"}
    assert set(run["by_new_tokens"]["ours, ONNX fp32"]) == {"2", "5"}
    assert "llama.cpp" in run["skipped"]


def test_bench_e2e_short(bundle, tmp_path):
    """With the C path's portable kernels forced (--isa scalar), as an AVX2 run forces AVX2 on an AVX-512 machine."""
    import bench_e2e

    with torch_threads(1):
        assert bench_e2e.main([str(bundle), "--threads", "1", "--runs", "2", "--warmup", "1", "--max-new-tokens",
                               "4", "--isa", "scalar", *_outputs(tmp_path, "e2e")]) == 0
    result = _check(tmp_path, "e2e", bench_e2e.SECTION)
    run = result["runs"][0]
    assert set(run["columns"]) == {"ours, default (c)", "ours, ONNX decoder (onnx)", "PyTorch eager fp32"}
    assert all(len(r["tokens"]) == 4 for r in run["columns"].values())
    assert all(r["tokens_equal_pytorch"] is True for r in run["columns"].values())
    assert result["machine"]["c_decode_isa_forced"] == "scalar"
    assert "decode path scalar (forced)" in (tmp_path / "RESULTS.md").read_text()


def test_bench_decode_isa_short(bundle, tmp_path):
    """The kernel workbench: this checkout's C core against a baseline library (here the same file), the portable
    path forced, greedy tokens compared between the two, and the per-matrix kernel profile."""
    import bench_decode_isa

    from crome_runtime import ccore

    out = tmp_path / "isa.json"
    assert bench_decode_isa.main([str(bundle), "--isa", "scalar", "--baseline-lib", str(ccore._library_path()),
                                  "--threads", "1", "--runs", "1", "--warmup", "0", "--prefix", "3", "--new-tokens", "2",
                                  "--kernels", "--bandwidth-mb", "16", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["threads"]["1"]
    assert row["tokens_equal_baseline"] and row["logit_cos_min_vs_baseline"] > 0.999999
    assert row["ours"]["cpu_ms_median"] >= 0 and row["kernels_ms"]["per_token_ms"] > 0
