"""Measurements behind the exporter's choices (not part of `crome-edge export`); writes JSON to stdout.

    python -m crome_export.measure decoder-int8 --backbone smol:untrained
        FP32 vs MatMulNBits 8-bit (accuracy levels 0 and 4) vs dynamic QInt8 decoders: prefill and decode
        latency (warm-up first, median of repeats, same process, same threads) and accuracy against FP32
        (logit cosine, greedy agreement over 24 steps on real-embedding prompts).
    python -m crome_export.measure export-times --backbone smol:untrained
        `crome-edge export` of two random adapters into a fresh cache: first (builds the backbone parts)
        and second (cached) wall time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def decoder_int8(backbone_spec: str, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    from crome_edge.backbones import load_backbone
    from crome_export import quantize
    from crome_export.decoder import decoder_input_names, export_decoder

    backbone = load_backbone(backbone_spec)
    out: dict = {"backbone": backbone.info.name, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        dims = export_decoder(backbone.llm, tmp / "fp32.onnx", 18)
        out["fp32_export_s"] = round(time.perf_counter() - t, 2)
        variants = {"fp32": tmp / "fp32.onnx"}
        for method in ("matmulnbits8", "dynamic-qint8"):
            t = time.perf_counter()
            quantize.quantize_decoder(tmp / "fp32.onnx", tmp / f"{method}.onnx", method)
            out[f"{method}_quantize_s"] = round(time.perf_counter() - t, 2)
            variants[method] = tmp / f"{method}.onnx"
        # accuracy level 0: dequantise to fp32 compute (for comparison with the default level 4)
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(variants["fp32"])), bits=8, block_size=quantize.NBITS_BLOCK_SIZE,
                                         is_symmetric=True, accuracy_level=quantize.NBITS_ACCURACY_LEVEL)  # head too
        quantizer.process()
        onnx.save(quantizer.model.model, str(tmp / "matmulnbits8_int8_head.onnx"))
        variants["matmulnbits8_int8_head"] = tmp / "matmulnbits8_int8_head.onnx"

        model = onnx.load(str(variants["matmulnbits8"]))
        for node in model.graph.node:
            for attribute in node.attribute:
                if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                    attribute.i = 0
        onnx.save(model, str(tmp / "matmulnbits8_acc0.onnx"))
        variants["matmulnbits8_acc0"] = tmp / "matmulnbits8_acc0.onnx"
        embeddings = backbone.llm.get_input_embeddings().get_parameter("weight").detach().numpy()
        rng = np.random.default_rng(0)
        names = decoder_input_names(dims.num_layers)
        prompts = [rng.integers(100, dims.vocab_size - 100, 40) for _ in range(4)]

        def feeds(embeds, mask, past):
            s = embeds.shape[1]
            positions = np.maximum(mask.cumsum(-1) - 1, 0)[:, -s:]
            return dict(zip(names, [embeds, mask, positions, *past]))

        empty = [np.zeros((1, dims.num_kv_heads, 0, dims.head_dim), np.float32)] * (2 * dims.num_layers)
        sessions, timing_feeds = {}, {}
        for name, path in variants.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sessions[name] = session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            prefill = feeds(embeddings[prompts[0]][None], np.ones((1, 40), np.int64), empty)
            _, *past = session.run(None, prefill)
            timing_feeds[name] = (prefill, feeds(embeddings[[7]][None], np.ones((1, 41), np.int64), past))
            out[name] = {"bytes": path.stat().st_size}
        # Interleaved rounds (every variant once per round), so load from other processes hits all alike.
        samples: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in variants}
        for _ in range(repeats):
            for name, session in sessions.items():
                prefill, step = timing_feeds[name]
                samples[name]["prefill"].append(_median_ms(lambda: session.run(None, prefill), 1))
                samples[name]["decode"].append(_median_ms(lambda: session.run(None, step), 3))
        for name in variants:
            out[name]["prefill_40_ms"] = round(statistics.median(samples[name]["prefill"]), 2)
            out[name]["decode_step_ms"] = round(statistics.median(samples[name]["decode"]), 2)
        reference = {}
        for name, session in sessions.items():
            greedy, first_logits = [], []
            for prompt in prompts:
                mask = np.ones((1, len(prompt)), np.int64)
                logits, *past = session.run(None, feeds(embeddings[prompt][None], mask, empty))
                first_logits.append(logits[0, -1])
                tokens = []
                for _ in range(24):
                    token = int(logits[0, -1].argmax())
                    tokens.append(token)
                    mask = np.concatenate([mask, np.ones((1, 1), np.int64)], 1)
                    logits, *past = session.run(None, feeds(embeddings[[token]][None], mask, past))
                greedy.append(tokens)
            if name == "fp32":
                reference = {"greedy": greedy, "logits": first_logits}
                continue
            cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(reference["logits"], first_logits)]
            agree = [sum(x == y for x, y in zip(a, b)) / len(a) for a, b in zip(reference["greedy"], greedy)]
            first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(reference["greedy"], greedy)]
            out[name].update(logit_cosine_min=round(min(cos), 6), greedy_position_agreement=round(float(np.mean(agree)), 4),
                             greedy_first_difference=first_diff)
    return out


def export_times(backbone_spec: str, precision: str) -> dict:
    import torch

    from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
    from crome_edge.adapter_file import AdapterMetadata, save_adapter
    from crome_edge.backbones import load_backbone
    from crome_edge.training.config import TrainConfig
    from crome_export.pipeline import ExportConfig, Progress, export_bundle

    backbone = load_backbone(backbone_spec)
    out: dict = {"backbone": backbone_spec, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frames = tmp / "frames"
        frames.mkdir()
        import cv2

        from crome_edge.synth.world import render_scene

        for i in range(32):
            cv2.imwrite(str(frames / f"{i:03d}.png"), render_scene(70_000_000 + i)[0])
        for run in ("first", "cached"):
            torch.manual_seed(len(run))
            adapter = CromeAdapter(AdapterConfig(backbone.info.d_model, TrainConfig.rank))
            torch.nn.init.normal_(adapter.up, std=0.02)
            path = tmp / f"{run}.safetensors"
            save_adapter(path, adapter, AdapterMetadata(adapter.config, backbone_spec, backbone.fingerprint(), backbone.info.prompt))
            started = time.perf_counter()
            result = export_bundle(ExportConfig(adapter=path, backbone=backbone_spec, precision=precision,
                                                calib=str(frames), max_new_tokens=8, threads=1,
                                                cache_dir=tmp / "cache"), Progress(7))
            out[run] = {"total_s": round(time.perf_counter() - started, 2), "stages_s": result.seconds,
                        "backbone_parts_s": result.report["timings_s"]["backbone_parts"],
                        "bundle_bytes": {p.name: p.stat().st_size for p in result.bundle.iterdir()},
                        "greedy": result.report["greedy"], "stages": result.report["stages"],
                        "quantization": result.report["quantization"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("decoder-int8", "export-times"))
    parser.add_argument("--backbone", default="smol:untrained")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="int8")
    args = parser.parse_args()
    if args.what == "decoder-int8":
        result = decoder_int8(args.backbone, args.threads, args.repeats)
    else:
        result = export_times(args.backbone, args.precision)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
