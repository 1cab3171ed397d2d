"""What an answer's confidence costs (crome_runtime/confidence.py), per answer, on each decode path.

The margin and the mean log-probability are read off logits every answer computes anyway: their cost is the
engine's own "confidence" stage (one pass over the vocabulary per drawn token). A closed-set adapter's candidates
cost a decoder run after the answer (the "candidates" stage): one batched ONNX run, or one C step per distinct
answer-prefix token. Interleaved per round, on one frame (its vision output cached, so the rounds differ only in
what is measured): the answer with candidates, then without. Prints medians and writes JSON (--json). Torch-free.

    OMP_NUM_THREADS=1 python benchmarks/bench_confidence.py --bundle line3.bundle --rounds 25 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def measure(bundle: Path, decoder: str, rounds: int, threads: int, image: Path | None) -> dict:
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions

    engine = Engine.load(bundle, EngineConfig(threads=threads, decoder=decoder, spin=False))
    entry = next((e for e in engine.adapters.entries if e.answers), None)
    if entry is None:
        raise SystemExit(f"{bundle} has no closed-set adapter (no manifest entry lists `answers`); re-export it")
    question = entry.route.questions[0]
    frame = engine.frame(image if image else np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    runs: dict[str, list] = {"with": [], "without": []}
    for i in range(rounds + 2):  # two warm-up rounds
        for label, candidates in (("with", True), ("without", False)):
            answer = engine.answer(frame, question, GenerationOptions(candidates=candidates))
            if i >= 2:
                runs[label].append(answer)
    median = lambda values: statistics.median(values)  # noqa: E731
    low = lambda values: min(values)  # noqa: E731  (a shared machine preempts some rounds: the floor is shown too)
    with_, without = runs["with"], runs["without"]
    last = with_[-1]
    return {
        "decoder": engine.decoder_backend, "adapter": entry.name, "answers": len(entry.answers),
        "question": question, "answer": last.text, "tokens": len(last.token_ids), "rounds": rounds,
        "confidence": last.confidence.to_dict(),
        "margin_and_logprob_ms": median([a.timings_ms.get("confidence", 0.0) for a in without]),
        "margin_and_logprob_min_ms": low([a.timings_ms.get("confidence", 0.0) for a in without]),
        "candidates_ms": median([a.timings_ms.get("candidates", 0.0) for a in with_]),
        "candidates_min_ms": low([a.timings_ms.get("candidates", 0.0) for a in with_]),
        "answer_ms_with_candidates": median([a.total_ms for a in with_]),
        "answer_ms_without_candidates": median([a.total_ms for a in without]),
        "decode_ms": median([a.timings_ms.get("decode", 0.0) for a in without]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--decoder", action="append", choices=("onnx", "c"), help="default: both")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=Path, help="a frame (default: a seeded noise frame)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [measure(args.bundle, d, args.rounds, args.threads, args.image) for d in args.decoder or ("onnx", "c")]
    for r in results:
        print(f"{r['decoder']:>4} decoder, {r['adapter']} ({r['answers']} answers), {r['tokens']} tokens "
              f"{r['answer']!r}: margin+logprob {r['margin_and_logprob_ms']:.3f} ms (min "
              f"{r['margin_and_logprob_min_ms']:.3f}), candidates {r['candidates_ms']:.2f} ms (min "
              f"{r['candidates_min_ms']:.2f}); answer {r['answer_ms_without_candidates']:.1f} ms without, "
              f"{r['answer_ms_with_candidates']:.1f} ms with (median of {r['rounds']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
