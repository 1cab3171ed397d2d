"""The runtime on the real embedded default: smol + the shipped line3 adapter, FP32 bundle (slow).

Exports the bundle with the exporter's Python API (a few minutes on 2 cores), then checks the engine's
greedy tokens against CromeModel.generate (batch 1) on the export's own held-out prompts and against the
report's agreement, plus a streamed answer through `crome-edge run`.
"""
import pytest
import torch
from tests.support.bundles import torch_threads

pytestmark = pytest.mark.slow

EVAL_LIMIT = 12


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from pathlib import Path

    import crome_edge.weights
    from crome_edge.adapter_file import read_metadata
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    from dataclasses import replace

    from crome_edge.synth.dataset_writer import SynthConfig, write_dataset

    adapter = Path(crome_edge.weights.__file__).parent / "line3.safetensors"
    root = tmp_path_factory.mktemp("smol")
    # The adapter's training set, regenerated (deterministic seeds; recipes/README.md): the path recorded in the
    # adapter is the machine it was trained on.
    write_dataset(SynthConfig(out=str(root / "line3_train"), task="line3", split="train", n=500))
    data = root / "line3_train" / "data.jsonl"
    meta = replace(read_metadata(adapter), train_data=str(data))
    out = root / "line3.bundle"
    with torch_threads(1):
        export_bundle(ExportConfig(adapter=adapter, precision="fp32", out=out, threads=1, eval_limit=EVAL_LIMIT,
                                   data=data), Progress(7, enabled=False))
    return {"adapter": adapter, "bundle": out, "meta": meta}


def test_smol_line3_fp32_equals_pytorch_and_the_report(smol):
    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones import load_backbone
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_export.frames import load_export_data
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions

    engine = Engine.load(smol["bundle"], EngineConfig(threads=1))
    report = engine.bundle.report["adapters"]["line3"]  # every export writes the several-adapters layout
    backbone = load_backbone(smol["meta"].backbone_name)
    adapter, _ = load_adapter(smol["adapter"], backbone)
    model = CromeModel(backbone, adapter.eval()).eval()
    data = load_export_data(smol["meta"], backbone.info, None, False, EVAL_LIMIT)
    max_new = report["inputs"]["max_new_tokens"]
    identical = 0
    with torch_threads(1), torch.no_grad():
        for sample in data.evaluation:
            pixels = data.pixels[sample.image]
            expected = model.generate(torch.from_numpy(pixels[None]), [sample.question], GenerationConfig(max_new))[0]
            got = engine.answer(engine.frame_from_pixels(pixels), sample.question, GenerationOptions(max_new_tokens=max_new))
            identical += got.token_ids == expected
            assert got.text == model.backbone.decode(got.token_ids)
    greedy = report["greedy"]["fp32"]
    assert identical == greedy["identical"] == greedy["prompts"] == len(data.evaluation)


def test_smol_run_cli_streams_an_answer(smol, capsys):
    from crome_cli.main import main
    from crome_edge.data import load_dataset

    sample = load_dataset(smol["meta"].train_data).samples[0]
    assert main(["run", "--bundle", str(smol["bundle"]), "--image", str(sample.image), "--prompt", sample.question,
                 "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "tokens, stop" in err


def test_smol_acceptance_set_ships_under_2_mb_and_verify_passes(smol, capsys):
    from crome_cli.main import main
    from crome_runtime.adapter_entries import file_name
    from crome_runtime.manifest import read_manifest

    files = read_manifest(smol["bundle"], verify=False).files
    json_name, arrays_name = file_name("line3", "acceptance"), file_name("line3", "acceptance_arrays")
    assert files[json_name].bytes + files[arrays_name].bytes < 2_000_000
    assert main(["verify", str(smol["bundle"]), "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "gate fp32_parity: ok" in table and "measured on: " in table
