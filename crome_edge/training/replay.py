"""`--replay N`: mix N general Q&A samples into adapter fine-tuning, so that one adapter keeps the backbone's skills.

An adapter trained on one task alone answers every question with that task's answers (docs/architecture.md §7).
Replaying some of what the backbone already answers teaches the adapter to leave those answers alone. Where the
samples come from:

- `--replay-data PATH`: the user's own general set (any dataset layout, crome_edge.data.dataset);
- otherwise the backbone's own pretraining questions: the synthetic conveyor Q&A (`crome-edge data synth --task
  pretrain --split train --questions one`: one of the five questions per frame, balanced) that the embedded
  backbones were pretrained on, rendered once into the user cache. A local HF backbone was pretrained on
  something else, so it needs --replay-data.

N samples are drawn (seeded) from the source; only training sees them. The validation split (and export's
fidelity set) stay the task's own, so val accuracy still measures the task. The adapter records what was
replayed (`training.replay`), including the replayed questions, which join its routes at export.
Not here: the loop (trainer.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from crome_edge.data.dataset import Sample, load_dataset
from crome_edge.errors import CromeError

SYNTH_PRETRAINED = ("smol", "tiny")  # backbones whose pretraining Q&A is the synthetic conveyor set
# Fine-tuning caches each training frame's visual prefix (with --augment flips, four views: ~0.3 MB per frame on
# smol), so replay is bounded: 10,000 samples is ~3 GB of cache on smol.
MAX_REPLAY = 10_000


@dataclass
class Replay:
    samples: list[Sample]
    record: dict  # what the adapter's training metadata says about it


def replay_samples(n: int, replay_data: str | None, backbone_name: str, seed: int,
                   note=lambda message: None) -> Replay:
    """N samples from `replay_data` or the backbone's pretraining set (see the module docstring)."""
    if not 0 < n <= MAX_REPLAY:
        raise CromeError(f"--replay must be 1..{MAX_REPLAY:,} samples, got {n} (every replayed frame's visual prefix is "
                         "cached in memory while training)")
    if replay_data is not None:
        dataset = load_dataset(replay_data)
        source = str(dataset.source)
    else:
        dataset, source = _pretraining_set(n, backbone_name, note), "backbone pretraining questions (synthetic)"
    if len(dataset.samples) < n:
        raise CromeError(f"--replay {n}: {dataset.source} holds only {len(dataset.samples)} samples; "
                         f"pass --replay {len(dataset.samples)} or a larger --replay-data")
    picked = sorted(random.Random(seed).sample(range(len(dataset.samples)), n))
    samples = [dataset.samples[i] for i in picked]
    record = {"n": n, "source": source, "data": str(dataset.source), "data_fingerprint": dataset.fingerprint(),
              "questions": sorted({s.question for s in samples})}
    return Replay(samples, record)


def _pretraining_set(n: int, backbone_name: str, note):
    base = backbone_name.split(":", 1)[0]
    if base not in SYNTH_PRETRAINED:
        raise CromeError(f"--replay without --replay-data replays the synthetic conveyor pretraining questions, which "
                         f"only the embedded backbones ({', '.join(SYNTH_PRETRAINED)}) were trained on; backbone "
                         f"{backbone_name!r} was not. Pass --replay-data with a general Q&A set for it")
    from crome_edge.synth.recipe import SynthRecipe, materialize
    from crome_edge.synth.world import DEFAULT_SIZE

    recipe = SynthRecipe(task="pretrain", split="train", n=n, seed=0, size=DEFAULT_SIZE, questions="one")
    return load_dataset(materialize(recipe, note))
