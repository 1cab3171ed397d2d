"""Do the heat maps mean something? Mass of each answer's map on the part's pixels against chance, on the synthetic
conveyor world, where the part's mask is known (issue 24 item 5, docs/explain.md); and what explain costs.

    OMP_NUM_THREADS=1 python benchmarks/explain_maps.py [--bundle B] [--n 200] [--cost 24] [--json out.json]

For each line-3 test frame with a part in view (crome_edge.synth.world.render_scene_regions: the very frame, plus
the part's and its defect's pixel masks): the bundle answers the line-3 question (routed to the shipped line3
adapter), Engine.explain gives the answer's map, drawn over the frame as `crome-edge run --explain` draws it
(crome_runtime.explain_image.heat, summing to 1); mass = the map's sum over the part's pixels, chance = the part's
share of the frame (a map that ignores the image). The defect row is the same over the pixels a defect changed, on
defective frames (line3 answers "scrap" for them: where the defect is is part of its task), also against a stricter
baseline: the map's mass on the part spread evenly over the part (does it point at the defect *within* the part?). "uniform" is the same
attention with every query weighted alike: what the adapter's change x gate weighting adds.

--cost N: explain's own cost per answer (median of N), and the normal path before/after the feature: the same
bundle with its vision graph's optional output split off (the graph as exported before it existed, bit-identical
main output: tests/test_explain_vision.py), answers timed in alternating rounds so load drifts hit both alike.
Default bundle: the embedded default (smol + line3 + line5, INT8; crome-edge serve's), exported once into the cache.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def frames(n: int, split: str = "test"):
    """(seed, image, scene, part mask, defect mask) of the first n frames of the line-3 split with a part in view."""
    from crome_edge.synth.splits import split_seeds
    from crome_edge.synth.world import render_scene_regions

    found, start = 0, 0
    while found < n:
        for seed in split_seeds("line3", split, 4 * n, start):
            image, scene, part, defect = render_scene_regions(seed)
            if not scene.present:
                continue
            yield seed, image, scene, part, defect
            found += 1
            if found == n:
                return
        start += 4 * n


def measure_maps(engine, n: int) -> dict:
    """Mass on part / on defect vs chance over n frames (see the module docstring)."""
    from crome_edge.synth.line3 import LINE3_QUESTION
    from crome_runtime.explain_image import heat
    from crome_runtime.profiler import now

    rows = []
    for seed, image, scene, part, defect in frames(n):
        frame = engine.frame(image)
        answer = engine.answer(frame, LINE3_QUESTION)
        started = now()
        result = engine.explain(frame, LINE3_QUESTION, answer.adapter)
        explain_ms = (now() - started) / 1e6
        h, w = part.shape
        mapped, uniform = heat(result.grid, h, w), heat(result.attention.mean(axis=0), h, w)
        row = {"seed": seed, "answer": answer.text.strip(), "adapter": answer.adapter, "explain_ms": explain_ms,
               "mass_part": float(mapped[part].sum()), "chance_part": float(part.mean()),
               "uniform_part": float(uniform[part].sum()), "weights": result.weight.round(4).tolist(),
               "change": result.change.round(4).tolist(), "gate": result.gate.round(4).tolist()}
        if scene.defective:
            row.update(defect=scene.defect, mass_defect=float(mapped[defect].sum()), chance_defect=float(defect.mean()),
                       uniform_defect=float(uniform[defect].sum()),
                       # a map spread evenly over the part with the mass it has there: does it point *within* the part?
                       part_spread_defect=row["mass_part"] * float(defect.sum()) / max(float(part.sum()), 1.0))
        rows.append(row)
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    mean = lambda key, rs: float(np.mean([r[key] for r in rs]))  # noqa: E731
    defective = [r for r in rows if "mass_defect" in r]
    out = {
        "frames": len(rows), "adapters": sorted({str(r["adapter"]) for r in rows}),
        "part": {"mass": mean("mass_part", rows), "chance": mean("chance_part", rows),
                 "uniform_mass": mean("uniform_part", rows),
                 "frames_above_chance": float(np.mean([r["mass_part"] > r["chance_part"] for r in rows])),
                 "frames_above_2x_chance": float(np.mean([r["mass_part"] > 2 * r["chance_part"] for r in rows]))},
        "mean_change": mean_list(rows, "change"), "mean_gate": mean_list(rows, "gate"),
        "weight_spread": float(np.mean([max(r["weights"]) - min(r["weights"]) for r in rows])),
        "explain_ms_median": float(statistics.median(r["explain_ms"] for r in rows)),
        "rows": rows,
    }
    out["part"]["ratio"] = out["part"]["mass"] / out["part"]["chance"]
    if defective:
        out["defect"] = {"frames": len(defective), "mass": mean("mass_defect", defective),
                         "chance": mean("chance_defect", defective), "uniform_mass": mean("uniform_defect", defective),
                         "frames_above_chance": float(np.mean([r["mass_defect"] > r["chance_defect"] for r in defective])),
                         "part_spread": mean("part_spread_defect", defective),
                         "frames_above_part_spread": float(np.mean([r["mass_defect"] > r["part_spread_defect"]
                                                                    for r in defective]))}
        out["defect"]["ratio"] = out["defect"]["mass"] / out["defect"]["chance"]
        out["defect"]["ratio_within_part"] = out["defect"]["mass"] / out["defect"]["part_spread"]
    return out


def mean_list(rows: list[dict], key: str) -> float:
    return float(np.mean([np.mean(r[key]) for r in rows]))


def before_feature(bundle: Path, target: Path) -> Path:
    """A copy of `bundle` whose vision graph has its optional outputs split off: the graph before the feature."""
    import onnx

    from crome_export.optional_outputs import split_optional
    from crome_runtime import formats
    from crome_runtime.manifest import sha256_file

    shutil.copytree(bundle, target)
    vision = target / formats.VISION_ONNX
    onnx.save(split_optional(onnx.load(str(vision)))[0], str(vision))
    manifest = json.loads((target / formats.MANIFEST_FILE).read_text())
    manifest["files"][formats.VISION_ONNX].update(sha256=sha256_file(vision), bytes=vision.stat().st_size)
    (target / formats.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return target


def measure_cost(bundle: Path, rounds: int, threads: int) -> dict:
    """The normal path's answer and vision times on the bundle before/after the feature (alternating, caches cleared
    each answer), and explain's own cost, medians of `rounds` each."""
    from crome_edge.synth.line3 import LINE3_QUESTION
    from crome_runtime.engine import Engine, EngineConfig
    from crome_runtime.profiler import now

    with tempfile.TemporaryDirectory(prefix="crome-explain-cost-") as tmp:
        engines = {"after": Engine.load(bundle, EngineConfig(threads=threads)),
                   "before": Engine.load(before_feature(bundle, Path(tmp) / "before"), EngineConfig(threads=threads))}
        images = [image for _, image, *_ in frames(rounds)]
        times: dict[str, dict[str, list[float]]] = {k: {"answer_ms": [], "vision_ms": []} for k in engines}
        explain_ms = []
        for index, image in enumerate([images[0]] + images):  # the first round warms both up, untimed
            for name in (("before", "after") if index % 2 else ("after", "before")):
                engine = engines[name]
                engine.clear_caches()
                frame = engine.frame(image)
                answer = engine.answer(frame, LINE3_QUESTION)
                if index:
                    times[name]["answer_ms"].append(float(answer.total_ms or 0.0))
                    times[name]["vision_ms"].append(float(answer.timings_ms.get("vision", 0.0)))
        graph = vision_graph_ms(engines, engines["after"].frame(images[0]), LINE3_QUESTION, 10 * rounds)
        engine = engines["after"]  # explain's own cost: a loop of its own, so it disturbs no timed answer above
        for image in images:
            frame = engine.frame(image)
            answer = engine.answer(frame, LINE3_QUESTION)
            started = now()
            engine.explain(frame, LINE3_QUESTION, answer.adapter)
            explain_ms.append((now() - started) / 1e6)
    medians = {name: {k: float(statistics.median(v)) for k, v in t.items()} for name, t in times.items()}
    return {"rounds": rounds, "threads": threads, "normal_path": medians, "vision_graph_ms": graph,
            "explain_ms_median": float(statistics.median(explain_ms)), "explain_ms_p90": float(np.percentile(explain_ms, 90))}


def vision_graph_ms(engines: dict, frame, question: str, reps: int) -> dict:
    """The vision session alone, before/after interleaved (answers are too noisy on a shared CPU to show a small
    difference): the main output only, and after's two outputs together (what explain reads). Median and p10 ms."""
    from crome_runtime import formats
    from crome_runtime.profiler import now
    from crome_runtime.vision_inputs import vision_feeds

    engine = engines["after"]
    feeds = vision_feeds(frame.pixels[None], [question], engine.manifest.backbone, engine.bundle.qformer_tokenizer)
    runs = {"before": [formats.OUT_VISUAL_EMBEDS], "after": [formats.OUT_VISUAL_EMBEDS],
            "after, both outputs": [formats.OUT_VISUAL_EMBEDS, formats.OUT_QUERY_ATTENTION]}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps + 1):
        for name in (list(runs) if rep % 2 else list(runs)[::-1]):
            session = engines[name.split(",")[0]].sessions["vision"]
            started = now()
            session.run(runs[name], feeds)
            if rep:  # the first round warms up
                times[name].append((now() - started) / 1e6)
    return {name: {"median": float(statistics.median(t)), "p10": float(np.percentile(t, 10))} for name, t in times.items()}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
    return {"cpu": model, "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle with the line3 adapter (default: the embedded default)")
    parser.add_argument("--n", type=int, default=200, help="frames with a part in view (default 200)")
    parser.add_argument("--cost", type=int, default=0, metavar="N", help="also time explain and the normal path, N each")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from crome_runtime.engine import Engine, EngineConfig

    if args.bundle is None:
        from crome_cli.default_bundle import ensure_default_bundle

        args.bundle = ensure_default_bundle(lambda line: print(line, file=sys.stderr))
    started = time.time()
    engine = Engine.load(args.bundle, EngineConfig(threads=args.threads))
    result = {"bundle": str(args.bundle), "precision": engine.manifest.precision, "machine": machine(),
              "command": "OMP_NUM_THREADS=1 python benchmarks/explain_maps.py " + " ".join(argv or sys.argv[1:]),
              "maps": measure_maps(engine, args.n)}
    if args.cost:
        result["cost"] = measure_cost(args.bundle, args.cost, args.threads)
    result["seconds"] = round(time.time() - started, 1)
    maps = result["maps"]
    print(f"{maps['frames']} frames ({engine.manifest.precision}, adapters {maps['adapters']}): heat-map mass on the "
          f"part {maps['part']['mass']:.3f} vs chance {maps['part']['chance']:.3f} ({maps['part']['ratio']:.2f}x; "
          f"{maps['part']['frames_above_2x_chance']:.0%} of frames above 2x chance); every query alike "
          f"{maps['part']['uniform_mass']:.3f}")
    if "defect" in maps:
        d = maps["defect"]
        print(f"{d['frames']} defective frames: mass on the defect {d['mass']:.4f} vs chance {d['chance']:.4f} "
              f"({d['ratio']:.2f}x; {d['frames_above_chance']:.0%} above chance); every query alike {d['uniform_mass']:.4f}; "
              f"the part's mass spread evenly over it {d['part_spread']:.4f} ({d['ratio_within_part']:.2f}x; "
              f"{d['frames_above_part_spread']:.0%} of frames above)")
    print(f"per query: mean change {maps['mean_change']:.3f}, mean gate {maps['mean_gate']:.3f}, weight spread "
          f"(max - min) {maps['weight_spread']:.4f}; explain {maps['explain_ms_median']:.1f} ms median")
    if "cost" in result:
        c = result["cost"]
        print(f"cost ({c['rounds']} rounds, {c['threads']} thread): answer before {c['normal_path']['before']['answer_ms']:.1f} "
              f"ms, after {c['normal_path']['after']['answer_ms']:.1f} ms; vision before "
              f"{c['normal_path']['before']['vision_ms']:.2f} ms, after {c['normal_path']['after']['vision_ms']:.2f} ms; "
              f"explain {c['explain_ms_median']:.1f} ms median (p90 {c['explain_ms_p90']:.1f})")
        g = c["vision_graph_ms"]
        print("vision graph alone, interleaved: " + "; ".join(f"{name} {v['median']:.2f} ms (p10 {v['p10']:.2f})"
                                                            for name, v in g.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
