"""The heat maps mean something (issue 24 item 5; docs/explain.md): on the synthetic conveyor world, where the part's
pixels are known, benchmarks/explain_maps.py's mass of each answer's map on the part against chance (the part's share
of the frame), on the embedded default backbone smol with the shipped line3 adapter (FP32 bundle, slow), and on the
defect's pixels for defective parts (line3 sends them to scrap: where the defect is belongs to its task).
The full run (200 frames, INT8 default bundle) is in benchmarks/RESULTS.md; here 40 frames."""
import json
import sys
from pathlib import Path

import pytest
from tests.support.bundles import torch_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytestmark = pytest.mark.slow

FRAMES = 40
# Margins: over 200 frames (INT8, benchmarks/RESULTS.md) the maps put 0.68 of their mass on parts covering 0.13 of the
# frame (5.3x, worst frame 2.7x) and 0.105 on defects covering 0.013 (7.9x); 3x leaves room for 40 frames' spread.
PART_MIN_RATIO = 3.0
DEFECT_MIN_RATIO = 3.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from crome_edge.weights import shipped_adapter
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    out = tmp_path_factory.mktemp("explain-maps") / "line3.bundle"
    with torch_threads(1):
        export_bundle(ExportConfig(adapter=shipped_adapter("line3"), precision="fp32", out=out, threads=1,
                                   eval_limit=4), Progress(7, enabled=False))
    return out


def test_the_maps_mass_falls_on_the_part_and_its_defect_far_above_chance(bundle, tmp_path):
    import explain_maps

    out = tmp_path / "maps.json"
    assert explain_maps.main(["--bundle", str(bundle), "--n", str(FRAMES), "--json", str(out)]) == 0
    maps = json.loads(out.read_text())["maps"]
    assert maps["frames"] == FRAMES and maps["adapters"] == ["line3"]
    part = maps["part"]
    assert part["mass"] > PART_MIN_RATIO * part["chance"], part
    assert part["frames_above_chance"] >= 0.9, part
    defect = maps["defect"]
    assert defect["frames"] >= 10 and defect["mass"] > DEFECT_MIN_RATIO * defect["chance"], defect
    assert 0 < maps["mean_gate"] < 1 and maps["mean_change"] > 0
