"""`crome-edge train --replay N`: N general Q&A samples join the training split only (never validation), come from
the backbone's own synthetic pretraining questions (rendered once into the cache) or --replay-data, are recorded in
the adapter, and their questions join the adapter's routes. Bad combinations fail before training."""
import json

import pytest

from crome_edge.adapter_file import read_metadata
from crome_cli.main import main
from crome_edge.errors import CromeError
from crome_edge.synth.qa import PRETRAIN_QUESTIONS
from crome_edge.training.config import TrainConfig
from crome_edge.training.trainer import Trainer
from crome_edge.training.replay import replay_samples
from tests.support.datasets import synth_dataset

FAST = dict(batch_size=6, rank=8, lr=0.02, val_fraction=0.25, threads=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def line3_data(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("line3") / "line3", n=24)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROME_EDGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(data, out, **changes):
    return TrainConfig(data=str(data), out=str(out), backbone="tiny", **{**FAST, **changes})


def test_replay_joins_training_only_and_is_recorded_in_the_adapter(tmp_path, line3_data, tiny_backbone, cache):
    plain = Trainer(_config(line3_data, tmp_path / "plain.safetensors"), backbone=tiny_backbone)
    plain.setup()
    trainer = Trainer(_config(line3_data, tmp_path / "replay.safetensors", replay=15, steps=3), backbone=tiny_backbone)
    trainer.setup()
    assert trainer.val_samples == plain.val_samples  # validation still measures the task alone
    task, replayed = trainer.train_samples[:len(plain.train_samples)], trainer.train_samples[len(plain.train_samples):]
    assert task == plain.train_samples and len(replayed) == 15
    assert {s.question for s in replayed} <= set(PRETRAIN_QUESTIONS) and len({s.question for s in replayed}) == 5
    rendered = list((cache / "datasets").glob("pretrain-train-15-*"))
    assert len(rendered) == 1 and (rendered[0] / "data.jsonl").is_file()
    assert all(s.image.parent.parent == rendered[0] for s in replayed)

    result = trainer.run()  # setup() already ran: trains the run it set up
    record = read_metadata(result.out).training["replay"]
    assert record["n"] == 15 and record["questions"] == sorted(PRETRAIN_QUESTIONS)
    assert record["source"] == "backbone pretraining questions (synthetic)"
    assert result.summary["examples"] == len(plain.train_samples) + 15

    # the second run reuses the rendered set (same files, not rendered again)
    stamp = (rendered[0] / "data.jsonl").stat().st_mtime_ns
    again = Trainer(_config(line3_data, tmp_path / "again.safetensors", replay=15), backbone=tiny_backbone)
    again.setup()
    assert (rendered[0] / "data.jsonl").stat().st_mtime_ns == stamp
    assert [s.image for s in again.train_samples] == [s.image for s in trainer.train_samples]


def test_replayed_questions_join_the_adapters_route(tmp_path, line3_data, cache):
    from crome_export.multi import training_route

    out = tmp_path / "line3r.safetensors"
    assert main(["train", "--backbone", "tiny", "--data", str(line3_data), "--out", str(out), "--steps", "2",
                 "--batch-size", "6", "--rank", "8", "--val-fraction", "0.25", "--threads", "1", "--no-progress",
                 "--replay", "10"]) == 0
    route = training_route(out)
    assert set(route.questions) == {"Which bin does this part go to?", *PRETRAIN_QUESTIONS}
    meta = read_metadata(out)
    assert meta.training["questions"] == ["Which bin does this part go to?"]  # recorded at training
    moved = tmp_path / "gone"
    line3_data.parent.rename(moved)  # the training data is gone: the recorded route still holds
    try:
        assert training_route(out).questions == route.questions
    finally:
        moved.rename(line3_data.parent)


def test_replay_data_draws_a_seeded_subset_of_the_users_set(tmp_path, cache):
    general = synth_dataset(tmp_path / "general", n=12, task="pretrain")  # 12 frames x 5 questions
    first = replay_samples(20, str(general), "tiny", seed=0)
    assert len(first.samples) == 20 and first.record["data"] == str(general)
    assert [s.image for s in replay_samples(20, str(general), "tiny", seed=0).samples] == [s.image for s in first.samples]
    assert [(s.image, s.question) for s in replay_samples(20, str(general), "tiny", seed=1).samples] != \
        [(s.image, s.question) for s in first.samples]
    assert not (cache / "datasets").exists()  # a user's set is read where it is


@pytest.mark.parametrize("changes, message", [
    (dict(replay=61, replay_data="GENERAL"), "holds only 60 samples; pass --replay 60"),
    (dict(replay=5, stage="pretrain"), "needs --stage finetune"),
    (dict(replay_data="GENERAL"), "pass --replay N too"),
    (dict(replay=5, replay_data="LINE3"), "shares images with --data"),
])
def test_bad_replay_options_fail_before_training_and_write_nothing(tmp_path, line3_data, tiny_backbone, cache,
                                                                   changes, message):
    general = synth_dataset(tmp_path / "general", n=12, task="pretrain")
    names = {"GENERAL": str(general), "LINE3": str(line3_data)}
    changes = {k: names.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    out = tmp_path / "a.safetensors"
    with pytest.raises(CromeError, match=message.replace("?", r"\?")):
        Trainer(_config(line3_data, out, **changes), backbone=tiny_backbone).run()
    assert not out.exists()


def test_replay_without_data_needs_a_backbone_pretrained_on_the_synthetic_questions(cache):
    with pytest.raises(CromeError, match="Pass --replay-data with a general Q&A set"):
        replay_samples(5, None, "blip2-opt-2.7b", seed=0)
    for n in (0, 10_001):
        with pytest.raises(CromeError, match="--replay must be 1..10,000 samples"):
            replay_samples(n, None, "tiny", seed=0)


def test_cli_summary_reports_the_replay(tmp_path, line3_data, cache, capsys):
    out = tmp_path / "a.safetensors"
    assert main(["train", "--backbone", "tiny", "--data", str(line3_data), "--out", str(out), "--steps", "1",
                 "--batch-size", "6", "--rank", "8", "--threads", "1", "--no-progress", "--replay", "6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["replay"]["n"] == 6 and summary["replay"]["data_fingerprint"]
