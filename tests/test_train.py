"""Training on the tiny backbone: finetune trains the adapter alone (one optimizer group, backbone
bit-identical), lowers the validation loss and writes an adapter that `info` and `eval` read back;
checkpoints survive Ctrl-C and resume at their step; pretrain trains the visual side, never the LLM."""
import json
import os
import signal

import pytest
import torch

from crome_edge.backbones.base import tensor_fingerprint
from crome_edge.backbones.tiny import build_tiny
from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from crome_edge.training.checkpoint import TrainingInterrupted
from crome_edge.backbones.parts_file import load_backbone_parts
from crome_edge.training.checkpoint import load_checkpoint
from crome_edge.backbones.parts_file import llm_fingerprint
from tests.support.datasets import synth_dataset

FAST = dict(batch_size=6, rank=8, lr=0.02, val_fraction=0.25, threads=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def line3_data(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("line3") / "line3", n=24)


def _config(data, out, **changes):
    return TrainConfig(data=str(data), out=str(out), backbone="tiny", **{**FAST, **changes})


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_finetune_has_one_optimizer_group_of_adapter_parameters(tmp_path, line3_data, tiny_backbone):
    trainer = Trainer(_config(line3_data, tmp_path / "a.safetensors"), backbone=tiny_backbone)
    trainer.setup()
    groups = trainer.optimizer.param_groups
    assert len(groups) == 1 and groups[0]["name"] == "adapter"
    adapter_params = list(trainer.stage.adapter.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in adapter_params}
    assert sum(p.numel() for p in adapter_params) == 5 * 64 * 8
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    assert [id(p) for p in trainer.objective.parameters()] == [id(p) for p in adapter_params]


def test_finetune_leaves_every_backbone_tensor_bit_identical(tmp_path, line3_data, tiny_backbone):
    before = tensor_fingerprint(tiny_backbone.state_dict())
    result = Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=4), backbone=tiny_backbone).run()
    assert tensor_fingerprint(tiny_backbone.state_dict()) == before == tiny_backbone.fingerprint()
    assert not any(p.requires_grad for p in tiny_backbone.parameters()) and not tiny_backbone.training
    assert result.summary["steps"] == 4


def test_cli_finetune_lowers_val_loss_and_writes_an_adapter_info_and_eval_read(tmp_path, line3_data, capsys):
    out = tmp_path / "line3.safetensors"
    argv = ["train", "--backbone", "tiny", "--stage", "finetune", "--data", str(line3_data), "--out", str(out),
            "--epochs", "8", "--batch-size", "6", "--rank", "8", "--lr", "0.02", "--val-fraction", "0.25",
            "--threads", "1", "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_loss"] < 0.75 * summary["initial_val_loss"], summary
    assert summary["steps"] == 8 * 3 and summary["examples"] == 18 and summary["val_examples"] == 6
    assert len(summary["loss_curve"]["val_per_epoch"]) == 8

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "adapter" and info["config"] == {"d_model": 64, "rank": 8} and info["parameters"] == 5 * 64 * 8
    assert info["backbone"]["name"] == "tiny" and info["backbone"]["fingerprint"] == build_tiny(0).fingerprint()
    assert info["train_data"] == str(line3_data)
    training = info["training"]
    assert training["val_loss"] == summary["val_loss"] and training["split_seed"] == 0 and training["val_fraction"] == 0.25
    assert training["stage"] == "finetune" and training["rank"] == 8 and training["seconds"] > 0
    assert main(["info", str(out)]) == 0
    assert "crome-edge adapter" in capsys.readouterr().out

    assert main(["eval", "--backbone", "tiny", "--adapter", str(out), "--data", str(line3_data), "--split", "val"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 6 and report["accuracy"] == pytest.approx(training["val_accuracy"])
    assert set(report["per_question"]) == {"Which bin does this part go to?"}


AVX2 = {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}  # what a CPU without bf16 reports
AVX512_BF16 = {**AVX2, "avx512f": True, "avx512_bf16": True}


def test_bf16_autocast_trains_where_the_cpu_has_bf16(tmp_path, line3_data, tiny_backbone, monkeypatch, capsys):
    monkeypatch.setattr("crome_runtime.machine.features", lambda *args: AVX512_BF16)  # whatever this machine has
    result = Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=3, bf16=True), backbone=tiny_backbone).run()
    assert result.summary["bf16"] and result.summary["bf16_requested"] and "bf16_note" not in result.summary
    assert torch.isfinite(torch.tensor(result.summary["loss_curve"]["last"]))
    assert result.summary["val_loss"] < result.summary["initial_val_loss"]
    assert "no native bf16" not in capsys.readouterr().err


def test_bf16_falls_back_to_fp32_once_without_native_bf16(tmp_path, line3_data, tiny_backbone, monkeypatch, capsys):
    from crome_edge.adapter_file import read_metadata

    monkeypatch.setattr("crome_runtime.machine.features", lambda *args: AVX2)
    asked = Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=3, bf16=True), backbone=tiny_backbone).run()
    err = capsys.readouterr().err
    assert err.count("no native bf16") == 1 and "training in fp32" in err
    plain = Trainer(_config(line3_data, tmp_path / "b.safetensors", steps=3), backbone=tiny_backbone).run()
    assert asked.summary["bf16"] is False and asked.summary["bf16_requested"] is True
    assert "no native bf16" in asked.summary["bf16_note"]
    assert read_metadata(asked.out).training["bf16_note"] == asked.summary["bf16_note"]  # in the adapter too
    assert plain.summary["bf16"] is False and "bf16_note" not in plain.summary
    # the fallback is plain fp32 training: the same losses to the bit
    assert asked.summary["loss_curve"] == plain.summary["loss_curve"]
    assert asked.summary["val_loss"] == plain.summary["val_loss"]


def _interrupt_at(step, signum=signal.SIGINT):
    def on_step(current, loss):
        if current == step:
            os.kill(os.getpid(), signum)  # SIGINT: what Ctrl-C sends; SIGTERM: what a service manager sends

    return on_step


def test_sigterm_stops_at_a_step_with_a_valid_checkpoint_like_ctrl_c(tmp_path, line3_data, tiny_backbone):
    config = _config(line3_data, tmp_path / "t.safetensors", epochs=3)
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 3 of 9.*--resume"):
        Trainer(config, backbone=tiny_backbone, on_step=_interrupt_at(3, signal.SIGTERM)).run()
    assert load_checkpoint(config.checkpoint_path)["step"] == 3
    assert not (tmp_path / "t.safetensors").exists()


def test_ctrl_c_leaves_a_valid_checkpoint_and_resume_continues_from_it(tmp_path, line3_data, tiny_backbone):
    straight = Trainer(_config(line3_data, tmp_path / "straight.safetensors", epochs=3), backbone=tiny_backbone).run()

    config = _config(line3_data, tmp_path / "a.safetensors", epochs=3)
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 4 of 9.*--resume"):
        Trainer(config, backbone=tiny_backbone, on_step=_interrupt_at(4)).run()
    assert load_checkpoint(config.checkpoint_path)["step"] == 4
    assert not (tmp_path / "a.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is not None  # handler restored

    steps = []
    config.resume = True
    resumed = Trainer(config, backbone=tiny_backbone, on_step=lambda step, loss: steps.append(step)).run()
    assert steps == list(range(5, 10)) and resumed.summary["steps"] == 9
    from crome_edge.adapter_file import load_adapter

    a, _ = load_adapter(tmp_path / "a.safetensors")
    b, _ = load_adapter(tmp_path / "straight.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)
    assert resumed.summary["initial_val_loss"] == straight.summary["initial_val_loss"]


def test_cli_ctrl_c_exits_non_zero_with_the_resume_hint(tmp_path, line3_data, monkeypatch, capsys):
    from crome_edge.training import trainer as trainer_module

    original = trainer_module.Trainer.setup

    def setup_with_interrupt(self):
        self.on_step = _interrupt_at(2)
        original(self)

    monkeypatch.setattr(trainer_module.Trainer, "setup", setup_with_interrupt)
    out = tmp_path / "a.safetensors"
    argv = ["train", "--backbone", "tiny", "--data", str(line3_data), "--out", str(out), "--epochs", "2",
            "--batch-size", "6", "--threads", "1", "--no-progress", "--val-fraction", "0.25"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training stopped at step 2" in err and "--resume" in err
    assert load_checkpoint(tmp_path / "a.safetensors.ckpt")["step"] == 2 and not out.exists()


def test_resume_refuses_another_run_and_a_missing_checkpoint(tmp_path, line3_data, tiny_backbone):
    config = _config(line3_data, tmp_path / "a.safetensors", steps=2)
    with pytest.raises(CromeError, match="no checkpoint at"):
        Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=2, resume=True), backbone=tiny_backbone).run()
    Trainer(config, backbone=tiny_backbone).run()
    with pytest.raises(CromeError, match=r"different run \(rank: checkpoint 8, now 4\)"):
        Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=4, rank=4, resume=True), backbone=tiny_backbone).run()
    with pytest.raises(CromeError, match="already at step 2 of 2"):
        Trainer(_config(line3_data, tmp_path / "a.safetensors", steps=2, resume=True), backbone=tiny_backbone).run()


def test_bad_invocations_fail_before_training_and_write_nothing(tmp_path, line3_data, capsys):
    base = ["train", "--backbone", "tiny", "--data", str(line3_data), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "missing" / "a.safetensors")]) == 2
    assert f"directory {tmp_path / 'missing'} does not exist (create it first)" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "a.safetensors"), "--stage", "instruct"]) == 2
    assert "invalid choice: 'instruct'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "images/000.png", "question": "q"}\n')
    assert main(["train", "--backbone", "tiny", "--data", str(bad), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "bad.jsonl line 1 has no 'answer'" in capsys.readouterr().err
    (line3_data.parent / "missing.jsonl").write_text('{"image": "images/404.png", "question": "q", "answer": "a"}\n' * 3)
    assert main(["train", "--backbone", "tiny", "--data", str(line3_data.parent / "missing.jsonl"), "--val-fraction", "0",
                 "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "404.png (missing.jsonl line 1) not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize("train_vision", [False, True])
def test_pretrain_trains_the_visual_side_never_the_llm(tmp_path, line3_data, train_vision):
    backbone = build_tiny(0)
    llm_before, vision_before = tensor_fingerprint(backbone.llm.state_dict()), _state(backbone.vision)
    qformer_before, projection_before = _state(backbone.qformer), _state(backbone.projection)
    queries_before = backbone.query_tokens.detach().clone()
    config = _config(line3_data, tmp_path / "parts.safetensors", stage="pretrain", steps=4, train_vision=train_vision)
    trainer = Trainer(config, backbone=backbone)
    trainer.setup()
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["query_tokens", "qformer", "projection"] + (["vision"] if train_vision else [])
    assert not any(p.requires_grad for p in backbone.llm.parameters())
    result = trainer.run()

    assert tensor_fingerprint(backbone.llm.state_dict()) == llm_before
    assert not torch.equal(backbone.query_tokens, queries_before)
    assert any(not torch.equal(v, qformer_before[k]) for k, v in backbone.qformer.state_dict().items())
    assert any(not torch.equal(v, projection_before[k]) for k, v in backbone.projection.state_dict().items())
    vision_changed = any(not torch.equal(v, vision_before[k]) for k, v in backbone.vision.state_dict().items())
    assert vision_changed == train_vision
    assert backbone.fingerprint() != build_tiny(0).fingerprint()  # its cached fingerprint was refreshed
    assert not any(p.requires_grad for p in backbone.parameters())
    assert result.summary["stage"] == "pretrain" and result.summary["steps"] == 4

    fresh = build_tiny(0)
    meta = load_backbone_parts(tmp_path / "parts.safetensors", fresh)
    assert meta["backbone_name"] == "tiny" and meta["llm_fingerprint"] == llm_fingerprint(fresh)
    assert fresh.fingerprint() == backbone.fingerprint()
    with pytest.raises(CromeError, match="was trained for backbone tiny"):
        load_backbone_parts(tmp_path / "parts.safetensors", build_tiny(1))


def test_flips_cache_four_mirror_views_and_validate_on_the_frame_as_it_is(tmp_path, line3_data, tiny_backbone):
    plain = Trainer(_config(line3_data, tmp_path / "p.safetensors"), backbone=tiny_backbone)
    plain.setup()
    flips = Trainer(_config(line3_data, tmp_path / "f.safetensors", augment="flips"), backbone=tiny_backbone)
    flips.setup()
    sample = flips.train_samples[0]
    views = flips.stage._visual[flips.stage._key(sample)]
    assert views.shape[0] == 4 and plain.stage._visual[plain.stage._key(sample)].shape[0] == 1
    torch.testing.assert_close(views[0], plain.stage._visual[plain.stage._key(sample)][0], rtol=0, atol=0)
    pixels = flips.stage.pixels.batch([sample])
    mirrored_v = flips.stage.model.visual_embeds(torch.flip(pixels, (3,)), [sample.question])[0]
    torch.testing.assert_close(views[1], mirrored_v)
    assert all(not torch.allclose(views[0], views[k], atol=1e-4) for k in (1, 2, 3))  # a mirrored frame is a new view

    flips.stage.eval()
    torch.testing.assert_close(flips.stage.visual([sample] * 8), views[0].expand(8, -1, -1), rtol=0, atol=0)
    flips.stage.train()
    torch.manual_seed(0)
    drawn = flips.stage.visual([sample] * 64)
    matches = [int(torch.equal(v, views[k])) for v in drawn for k in range(4)]
    assert sum(matches) == 64 and all(sum(matches[k::4]) > 0 for k in range(4))  # every view drawn


def test_flips_train_deterministically_and_differently_from_plain(tmp_path, line3_data, tiny_backbone):
    runs = [Trainer(_config(line3_data, tmp_path / f"{name}.safetensors", steps=6, augment=augment),
                    backbone=tiny_backbone).run().summary for name, augment in (("a", "flips"), ("b", "flips"), ("c", "none"))]
    assert runs[0]["augment"] == "flips" and runs[2]["augment"] == "none"
    assert runs[0]["loss_curve"] == runs[1]["loss_curve"]
    assert runs[0]["loss_curve"]["first"] != runs[2]["loss_curve"]["first"]
    with pytest.raises(CromeError, match=r"different run \(augment: checkpoint 'none', now 'flips'\)"):
        Trainer(_config(line3_data, tmp_path / "c.safetensors", steps=8, augment="flips", resume=True),
                backbone=tiny_backbone).run()
    with pytest.raises(CromeError, match="unknown --augment 'rotate'; choose one of none, flips"):
        Trainer(_config(line3_data, tmp_path / "d.safetensors", augment="rotate"), backbone=tiny_backbone).run()


def test_pretrain_flips_mirror_training_pixels_only(tmp_path, line3_data):
    config = _config(line3_data, tmp_path / "parts.safetensors", stage="pretrain", steps=2, augment="flips")
    trainer = Trainer(config, backbone=build_tiny(0))
    trainer.setup()
    stage, batch = trainer.stage, trainer.train_samples[:4]
    stage.eval()
    with torch.no_grad():
        as_is = stage.loss(batch)
        assert torch.equal(as_is, stage.loss(batch))  # validation never mirrors
        stage.train()
        torch.manual_seed(1)
        mirrored_losses = {round(stage.loss(batch).item(), 6) for _ in range(6)}
    assert len(mirrored_losses) > 1 and mirrored_losses != {round(as_is.item(), 6)}
    assert trainer.run().summary["augment"] == "flips"


def test_training_without_a_validation_split_runs_and_reports_none(tmp_path, line3_data, tiny_backbone, capsys):
    out = tmp_path / "a.safetensors"
    argv = ["train", "--backbone", "tiny", "--data", str(line3_data), "--out", str(out), "--epochs", "2",
            "--batch-size", "6", "--rank", "8", "--val-fraction", "0", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "epoch 2 (step 8): train loss" in captured.err + captured.out
    assert "no validation split" in captured.err + captured.out
    assert "on 24 examples" in captured.out and out.is_file()


def test_a_checkpoint_from_before_augment_resumes_as_unaugmented(tmp_path, line3_data, tiny_backbone):
    from crome_edge.training.checkpoint import save_checkpoint

    config = _config(line3_data, tmp_path / "a.safetensors", epochs=2)
    with pytest.raises(TrainingInterrupted):
        Trainer(config, backbone=tiny_backbone, on_step=_interrupt_at(2)).run()
    state = load_checkpoint(config.checkpoint_path)
    del state["compat"]["augment"]  # written by an older crome-edge
    save_checkpoint(config.checkpoint_path, state)
    config.resume = True
    assert Trainer(config, backbone=tiny_backbone).run().summary["steps"] == 6
    with pytest.raises(CromeError, match=r"augment: checkpoint 'none', now 'flips'"):
        Trainer(_config(line3_data, tmp_path / "a.safetensors", epochs=3, augment="flips", resume=True),
                backbone=tiny_backbone).run()
