"""`crome-edge train` runs unchanged under torchrun: 2 CPU processes (gloo) on the tiny backbone; only
rank 0 prints and writes; the adapter it writes is valid and lowered the validation loss."""
import json
import os
import subprocess
import sys

from tests.support.datasets import synth_dataset


def test_torchrun_two_cpu_processes(tmp_path):
    data = synth_dataset(tmp_path / "data", n=24)
    out = tmp_path / "line3.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "crome_cli", "train", "--backbone", "tiny", "--data", str(data), "--out", str(out),
        "--epochs", "3", "--batch-size", "6", "--rank", "8", "--lr", "0.02", "--val-fraction", "0.25",
        "--threads", "1", "--device", "cpu", "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert summary["world_size"] == 2 and summary["steps"] == 9 and summary["batch_size"] == 6
    assert summary["val_loss"] < summary["initial_val_loss"]
    assert done.stderr.count("epoch 3 (step 9)") == 1  # one progress log, from rank 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "line3.safetensors", "line3.safetensors.ckpt"]

    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.tiny import build_tiny

    adapter, meta = load_adapter(out, build_tiny(0))
    assert meta.training["world_size"] == 2 and adapter.up.abs().sum() > 0
