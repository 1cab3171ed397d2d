"""`crome-edge ask`: answer a question about one image with the PyTorch model (backbone + optional adapter).

The quickest way to see a backbone at work; `--synthetic SEED` renders a conveyor frame and prints its
ground truth, so no camera or image is needed. For deployment, export a bundle and use `crome-edge run`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from crome_cli.flags import SEED, THREADS, whole
from crome_runtime.errors import CromeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="smol", help="tiny | smol | a local HF directory (default: smol)")
    parser.add_argument("--adapter", help="adapter .safetensors, or 'line3' / 'line5' for a shipped demo adapter")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="image file")
    source.add_argument("--synthetic", type=SEED, metavar="SEED", help="render synthetic conveyor frame SEED")
    parser.add_argument("--question", action="append", required=True, help="may be given several times")
    parser.add_argument("--max-new-tokens", type=whole(0), default=24)
    parser.add_argument("--threads", type=THREADS, default=None)


def run(args: argparse.Namespace) -> int:
    import torch

    from crome_edge.adapter_file import load_adapter
    from crome_edge.backbones.registry import load_backbone
    from crome_edge.model import CromeModel, GenerationConfig
    from crome_edge.weights import resolve_adapter
    from crome_runtime.limits import check_text
    from crome_runtime.preprocess import load_image, preprocess_image

    for question in args.question:  # before any model loads
        check_text(question, "--question")
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    for question in args.question:
        _check_context(backbone, question)
    model = CromeModel(backbone)
    if args.adapter:
        adapter, _ = load_adapter(resolve_adapter(args.adapter), backbone)
        model.attach_adapter(adapter)
    truth = None
    if args.synthetic is not None:
        from crome_edge.synth.world import render_scene

        image, scene = render_scene(args.synthetic, backbone.info.image_size)
        truth = {"kind": scene.kind, "colour": scene.colour, "defect": scene.defect}
    else:
        image = load_image(args.image)
    info = backbone.info
    pixels = torch.from_numpy(preprocess_image(image, info.image_size, info.image_mean, info.image_std, info.resize))[None]
    answers = model.answer(pixels.expand(len(args.question), -1, -1, -1), args.question,
                           GenerationConfig(max_new_tokens=args.max_new_tokens))
    result = {"answers": dict(zip(args.question, answers))}
    if truth is not None:
        result["ground_truth"] = truth
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _check_context(backbone, question: str) -> None:
    """The rule `run` applies (crome_runtime.limits.context_problem), on the PyTorch backbone's own context."""
    from crome_runtime.limits import context_problem

    prompt, tokenizer = backbone.info.prompt, backbone.llm_tokenizer
    queries, context = backbone.info.num_query_tokens, backbone.context_length()
    problem = context_problem(len(prompt.prompt_ids(tokenizer, question)), len(prompt.prompt_ids(tokenizer, "")),
                              queries, context)
    if problem:
        raise CromeError(problem)
