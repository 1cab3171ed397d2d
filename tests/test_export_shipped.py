"""The mission's literal command on the embedded default (slow): `crome-edge export --adapter line3.safetensors`
with the shipped adapter copied into an empty directory and no --data. The adapter's training set is not on
this machine; the exporter regenerates it from the recipe the adapter records and writes a bundle whose
gates pass. Only the CLI contract is checked here (the fidelity numbers are test_runtime_smol's business)."""
import json
import shutil
from pathlib import Path

import pytest

from crome_edge.adapter_file import read_metadata
from crome_cli.main import main
from crome_edge.weights import shipped_adapter
from crome_runtime import formats
from crome_runtime.manifest import read_manifest

pytestmark = pytest.mark.slow


def test_export_of_a_copied_shipped_adapter_needs_no_data(tmp_path, monkeypatch, capsys):
    recorded = Path(read_metadata(shipped_adapter("line3")).train_data)
    assert not recorded.exists(), (f"this test needs a machine without the adapter's training set, but {recorded} "
                                   "is here (a recipe run?): move it away to run this test")
    work = tmp_path / "empty"
    work.mkdir()
    shutil.copy(shipped_adapter("line3"), work / "line3.safetensors")
    monkeypatch.chdir(work)
    assert main(["export", "--adapter", "line3.safetensors"]) == 0
    err = capsys.readouterr().err
    assert "training data:" in err and "regenerat" in err  # "regenerating ..." or "reusing the regenerated ..."
    assert sorted(p.name for p in work.iterdir()) == ["line3.bundle", "line3.safetensors"]
    manifest = read_manifest(work / "line3.bundle", verify=True)
    assert manifest.precision == "int8" and manifest.adapter_names == ["line3"]
    assert manifest.adapters[0].route.questions and not manifest.adapters[0].route.patterns  # its training questions
    report = json.loads((work / "line3.bundle" / formats.REPORT_FILE).read_text())["adapters"]["line3"]
    assert "regenerated" in report["inputs"]["evaluation"] and "regenerated" in report["inputs"]["calibration"]
    held_out = read_metadata(shipped_adapter("line3")).training["val_examples"]
    assert report["inputs"]["eval_prompts"] == held_out  # the validation split the adapter held out (150 of 1500)
    assert all(gate["ok"] for gate in report["gates"].values()), report["gates"]
