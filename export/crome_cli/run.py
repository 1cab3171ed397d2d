"""`crome-edge run`: answer questions about an image with a bundle, torch-free (crome_runtime.engine).

Streams each answer to stdout as tokens arrive; says on stderr what ran where and how fast. `--profile
out.json` writes the per-stage summary (p50/p90/p99, time to first token, tokens/s) and a Chrome trace
(out.trace.json, for Perfetto). `--repeat N` runs every prompt N times with the engine's caches cleared
before each round, so every stage is measured each time; several `--prompt`s on one image share its
vision output, as in a deployment. Runtime errors are CromeErrors: crome_cli.main prints the message (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crome_cli.flags import SEED, THREADS, number, whole
from crome_runtime.errors import CromeError
from crome_runtime.formats import PROVIDER_CHOICES  # torch- and cv2-free (crome_runtime.providers imports cv2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (crome-edge export)")
    parser.add_argument("--image", required=True, type=Path, help="image file (PNG, JPEG, BMP, WebP, TIFF, PNM)")
    parser.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                        help="question about the image; repeat for several questions about the same image")
    parser.add_argument("--max-new-tokens", type=whole(0), metavar="N", help="answer length cap (default: the bundle's)")
    parser.add_argument("--temperature", type=number(minimum=0), metavar="T", help="0 = greedy (default: the bundle's)")
    parser.add_argument("--top-k", type=whole(0), metavar="K", help="sample from the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=number(above=0), metavar="P", help="nucleus sampling mass (1 = off)")
    parser.add_argument("--repetition-penalty", type=number(above=0), metavar="R",
                        help="penalty for repeating answer tokens (1 = off)")
    parser.add_argument("--adapter", metavar="NAME",
                        help="the bundle's adapter that answers, or 'none' for the frozen backbone alone (default: "
                             "the bundle's routes: each adapter answers the questions it was trained for)")
    parser.add_argument("--seed", type=SEED, default=0, help="sampling seed (default %(default)s)")
    parser.add_argument("--threads", type=THREADS, metavar="N",
                        help="ONNX Runtime threads per graph (default: one per core)")
    parser.add_argument("--provider", choices=PROVIDER_CHOICES,
                        help="execution provider (default auto: TensorRT > CUDA > CPU, whichever is available)")
    parser.add_argument("--profile", type=Path, metavar="OUT.json",
                        help="write a per-stage latency summary here and a Chrome trace to OUT.trace.json")
    parser.add_argument("--repeat", type=whole(1), default=1, metavar="N", help="run every prompt N times (default 1)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer instead of streaming")
    parser.add_argument("--explain", type=Path, metavar="OUT.png",
                        help="also write the frame with the answer's heat map over it (the image regions whose visual "
                             "queries the adapter weighted most, docs/explain.md) and the answer below, as .png or "
                             ".jpg; one --prompt; the bundle must be exported with this feature (it says when not)")


def run(args: argparse.Namespace) -> int:
    from crome_runtime.engine import Engine, EngineConfig, GenerationOptions
    from crome_runtime.manifest import GenerationDefaults
    from crome_runtime.profiler import format_summary

    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                                adapter=args.adapter)
    options.resolve(GenerationDefaults())  # a bad flag fails before the bundle is loaded
    if args.explain:  # refused now, not after the run
        from crome_runtime.explain_image import check_explain_output

        if len(args.prompt) != 1:
            raise CromeError(f"--explain draws one answer's map: give one --prompt (got {len(args.prompt)})")
        check_explain_output(args.explain, [args.bundle, args.image], within=[args.bundle])
    if args.profile:  # an output that cannot be written is refused now, not after the run
        from crome_runtime.profiler import check_profile_output

        check_profile_output(args.profile, "--profile", [args.bundle, args.image], within=[args.bundle])
    given = {"provider": args.provider, "threads": args.threads}  # None: EngineConfig's default
    config = EngineConfig(verify=not args.no_verify, **{k: v for k, v in given.items() if v is not None})
    engine = Engine.load(args.bundle, config)
    report = engine.providers
    threads = args.threads or "default"
    print(f"bundle {engine.bundle.name} on {report.summary()} (threads: {threads})", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.explain and engine.can_explain():
        raise CromeError(f"--explain: {engine.can_explain()}")
    for round_ in range(args.repeat):
        engine.clear_caches()
        frame = engine.frame(args.image)  # capture + preprocess, once per round; the prompts share it
        for prompt in args.prompt:
            stream = engine.stream(frame, prompt, options)
            for piece in stream:
                if not args.json:
                    print(piece, end="", flush=True)
            answer = stream.answer
            assert answer is not None  # set when the stream ends
            if not args.json:
                print(flush=True)  # the streamed answer's line ends before --explain says where it wrote
            explained = _explain(engine, frame, prompt, answer, args) if args.explain and round_ == args.repeat - 1 else None
            if args.json:
                print(json.dumps({"prompt": prompt, "answer": answer.text, "tokens": answer.token_ids,
                                  "finish_reason": answer.finish_reason, "ttft_ms": answer.ttft_ms,
                                  "total_ms": answer.total_ms, "cache": answer.cache,
                                  "adapter": answer.adapter, **({"explain": explained} if explained else {})}),
                      flush=True)
                continue
            if round_ == args.repeat - 1:
                tokens_per_s = len(answer.token_ids) / (answer.total_ms / 1e3) if answer.total_ms else 0.0
                ttft = f"{answer.ttft_ms:.1f} ms" if answer.ttft_ms is not None else "n/a"
                print(f"[{answer.adapter or 'no adapter'}: {len(answer.token_ids)} tokens, {answer.finish_reason}; first token {ttft}, "
                      f"{tokens_per_s:.1f} tokens/s end to end]", file=sys.stderr)
    if args.profile:
        metadata = {"command": "crome-edge run", "engine": engine.describe(), "repeat": args.repeat,
                    "prompts": args.prompt, "image": str(args.image)}
        try:
            summary_path, trace_path = engine.profiler.write(args.profile, metadata)
        except OSError as error:
            raise CromeError(f"cannot write the profile {args.profile}: {error.strerror or error}") from None
        print(format_summary(engine.profiler.summary()), file=sys.stderr)
        print(f"profile: {summary_path} (Chrome trace: {trace_path}, open it in https://ui.perfetto.dev)", file=sys.stderr)
    return 0


def _explain(engine, frame, prompt: str, answer, args) -> dict:
    """Writes --explain's image for `answer`; -> its map as JSON (crome_runtime.explain.Explanation.to_dict)."""
    from crome_runtime.explain_image import write_explain_image
    from crome_runtime.preprocess import load_image
    from crome_runtime.profiler import now

    started = now()
    result = engine.explain(frame, prompt, answer.adapter)
    write_explain_image(args.explain, load_image(args.image), result.grid,
                        f"{prompt} -> {answer.text.strip()} [{answer.adapter or 'no adapter'}]")
    print(f"explain: heat map ({result.weighting}, {len(result.weight)} queries, {result.grid.shape[0]}x"
          f"{result.grid.shape[1]} grid) -> {args.explain} ({(now() - started) / 1e6:.1f} ms)", file=sys.stderr)
    return result.to_dict()
