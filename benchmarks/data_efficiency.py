"""Adapter-only accuracy against training-set size, on real photographs and on line 3, as a user would run it.

Real photographs: the ELPV solar-cell set (Deitsch et al., 2,624 electroluminescence camera images of solar cells
from 44 modules, 300×300 greyscale), which ships inside the PyPI wheel `elpv-dataset==1.0.0.post1` (pinned by sha256,
`pip download --no-deps`, never installed). Its data licence is CC BY-NC-SA 4.0: this script uses it to measure,
and nothing of it is committed or shipped. The task ("What kind of cell is this?") names the cell type and
whether it is defective: "mono ok", "mono defective", "poly ok", "poly defective" (defect probability 0 -> ok,
>= 2/3 -> defective; the 1/3 ratings, which the annotators were unsure of, are left out).
Line 3: `crome-edge data synth --task line3` frames, held-out frames from the test split.

For each task and each N in --sizes: the N training images as class folders (`DIR/<answer>/*.png`, the layout a
user's own photos take), `crome-edge train --stage finetune` (adapter only, fixed steps), `crome-edge eval` on the
held-out set; the frozen backbone and the majority class beside it. Everything goes through the product's CLI.

    python benchmarks/data_efficiency.py --work runs/data_eff --sizes 25 50 100 200 500 --test 1000 \\
        --results benchmarks/RESULTS.md --plot benchmarks/data_efficiency.png --json runs/data_eff.json
    python benchmarks/data_efficiency.py --from-json runs/elpv.json runs/line3.json --results benchmarks/RESULTS.md \
        --plot benchmarks/data_efficiency.png    # one table and plot of runs made one task (or some sizes) at a time
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_output_arguments, command_line, publish, pyplot  # noqa: E402

from crome_edge.store.wheels import PinnedWheel  # noqa: E402

ELPV = PinnedWheel(
    package="elpv-dataset",
    version="1.0.0.post1",
    wheel_name="elpv_dataset-1.0.0.post1-py3-none-any.whl",
    sha256="85e31c1126ee9b48e62d3a0232c58f58b2d189b0814a45c13642fa0415af4a4c",
    size_mb=91,
)
ELPV_QUESTION = "What kind of cell is this?"
LINE3_QUESTION = "Which bin does this part go to?"
HEADING = "## Data efficiency: adapter-only accuracy against training-set size"


def elpv_labels(wheel: Path) -> list[tuple[str, str]]:
    """(member path, answer) per usable image of the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("elpv_dataset/data/labels.csv").decode()
    items = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        path, probability, kind = fields[0], float(fields[1]), fields[2]
        if 0 < probability < 0.5:  # an unsure rating: neither ok nor defective
            continue
        items.append((f"elpv_dataset/data/{path}", f"{kind} {'ok' if probability == 0 else 'defective'}"))
    return items


def stratified(items: list[tuple[str, str]], n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """n items with the classes in their overall proportions (at least one each)."""
    by_class: dict[str, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    picked = []
    for answer, members in sorted(by_class.items()):
        k = max(1, round(n * len(members) / len(items)))
        picked += [members[i] for i in rng.permutation(len(members))[:k]]
    return picked[:n]


def write_folders(wheel: Path, items: list[tuple[str, str]], out: Path) -> Path:
    """Class folders DIR/<answer>/<name>.png (answers with spaces become folder names as they are)."""
    if out.exists():
        shutil.rmtree(out)
    with zipfile.ZipFile(wheel) as archive:
        for member, answer in items:
            target = out / answer / Path(member).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    return out


def elpv_wheel(work: Path) -> Path:
    """The pinned ELPV wheel in `work/wheel/`, downloaded once (pip download --no-deps) and checked every time."""
    wheel_dir = work / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / ELPV.wheel_name
    if not wheel.is_file():
        ELPV.download(wheel_dir)
    ELPV.check(wheel)
    return wheel


def elpv_sets(work: Path, sizes: list[int], n_test: int, seed: int) -> tuple[dict[int, Path], Path, Counter]:
    wheel = elpv_wheel(work)
    items = elpv_labels(wheel)
    rng = np.random.default_rng(seed)
    order = [items[i] for i in rng.permutation(len(items))]
    test = order[:n_test]
    pool = order[n_test:]
    train_sets = {}
    for n in sizes:  # nested: each smaller set is drawn from the same pool with the same seed
        train_sets[n] = write_folders(wheel, stratified(pool, n, np.random.default_rng(seed + 1)), work / f"elpv-train-{n}")
    return train_sets, write_folders(wheel, test, work / "elpv-test"), Counter(a for _, a in test)


def line3_sets(work: Path, sizes: list[int], n_test: int) -> tuple[dict[int, Path], Path, Counter]:
    """Line-3 frames as class folders: the first N of the train split, the first n_test of the test split."""
    def folders(split: str, n: int, out: Path) -> Path:
        raw = work / f"line3-{split}-{n}-raw"
        if not raw.is_dir():
            cli("data", "synth", "--out", str(raw), "--task", "line3", "--split", split, "--n", str(n))
        if out.exists():
            shutil.rmtree(out)
        for line in (raw / "data.jsonl").read_text().splitlines():
            record = json.loads(line)
            target = out / record["answer"] / Path(record["image"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(raw / record["image"], target)
        return out

    largest = folders("train", max(sizes), work / f"line3-train-{max(sizes)}")
    train_sets = {}
    for n in sizes:
        names = sorted(largest.glob("*/*.png"), key=lambda p: p.name)[:n]
        out = work / f"line3-train-{n}"
        if n != max(sizes):
            if out.exists():
                shutil.rmtree(out)
            for path in names:
                (out / path.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out / path.parent.name / path.name)
        train_sets[n] = out
    test = folders("test", n_test, work / "line3-test")
    return train_sets, test, Counter(p.parent.name for p in test.glob("*/*.png"))


def cli(*args: str) -> str:
    """One `crome-edge` command through the product's CLI; its stdout."""
    done = subprocess.run([sys.executable, "-m", "crome_cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"crome-edge {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def evaluate(data: Path, question: str, adapter: Path | None, threads: int) -> float:
    args = ["eval", "--backbone", "smol", "--data", str(data), "--question", question, "--threads", str(threads)]
    out = cli(*args, *(["--adapter", str(adapter)] if adapter else []))
    return float(json.loads(out)["accuracy"])


def run_task(name: str, question: str, train_sets: dict[int, Path], test: Path, counts: Counter, args) -> dict:
    result = {"question": question, "test_n": sum(counts.values()), "test_classes": dict(counts),
              "chance": max(counts.values()) / sum(counts.values()), "points": []}
    result["frozen"] = evaluate(test, question, None, args.threads)
    print(f"{name}: frozen {result['frozen']:.3f}, majority {result['chance']:.3f}", flush=True)
    for n, data in sorted(train_sets.items()):
        adapter = args.work / f"{name}-{n}.safetensors"
        start = time.perf_counter()
        cli("train", "--stage", "finetune", "--backbone", "smol", "--data", str(data), "--question", question,
            "--out", str(adapter), "--force", "--rank", "64", "--steps", str(args.steps), "--batch-size", "16",
            "--lr", "2e-3", "--val-fraction", "0", "--threads", str(args.threads), "--no-progress",
            *(["--bf16"] if args.bf16 else []), "--augment", args.augment,
            *(["--pooled-map"] if args.pooled_map else []))
        seconds = time.perf_counter() - start
        accuracy = evaluate(test, question, adapter, args.threads)
        result["points"].append({"n": n, "accuracy": accuracy, "train_seconds": round(seconds, 1)})
        print(f"{name}: n={n} accuracy {accuracy:.3f} (trained in {seconds:.0f} s)", flush=True)
    return result


def markdown(result: dict) -> str:
    lines = [HEADING, "", f"`{result['command']}` on {result['machine']} ({result['date']}); adapter r=64, "
             f"{result['steps']} steps of batch 16, lr 2e-3, augment {result['augment']}"
             f"{', pooled map' if result.get('pooled_map') else ''}"
             f"{' (rows marked --pooled-map: trained with it)' if any(POOLED_SERIES in t for t in result['tasks']) else ''}"
             ", everything else frozen; exact-match accuracy on held-out "
             "images, through `crome-edge train` / `crome-edge eval`.", ""]
    sizes = sorted({p["n"] for task in result["tasks"].values() for p in task["points"]})
    lines.append("| task | held out | majority class | frozen backbone | " + " | ".join(f"N={n}" for n in sizes) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(sizes))
    for name, task in result["tasks"].items():
        got = {p["n"]: p["accuracy"] for p in task["points"]}
        cells = " | ".join(f"{got[n] * 100:.1f}%" if n in got else "not run" for n in sizes)
        lines.append(f"| {name} (\"{task['question']}\") | {task['test_n']} | {task['chance'] * 100:.1f}% | "
                     f"{task['frozen'] * 100:.1f}% | {cells} |")
    lines += ["", "![data efficiency](data_efficiency.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors: dict[str, str] = {}  # one colour per task, solid plain and dashed with the pooled map
    for name, task in result["tasks"].items():
        points, base = task["points"], name.removesuffix(POOLED_SERIES)
        line, = ax.plot([p["n"] for p in points], [100 * p["accuracy"] for p in points], marker="o", label=name,
                        color=colors.get(base), linestyle="--" if name.endswith(POOLED_SERIES) else "-")
        if base not in colors:
            colors[base] = line.get_color()
            ax.axhline(100 * task["chance"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    sizes = sorted({p["n"] for task in result["tasks"].values() for p in task["points"]})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training examples (adapter only)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("CROME adapter on the smol default (dashed: --pooled-map; dotted: majority class)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


POOLED_SERIES = " --pooled-map"  # the suffix of a task trained with `--pooled-map`, so both curves share one table


def merged(results: list[dict]) -> dict:
    """One result holding every task of `results` (each run's command kept beside its task). Runs with and without
    `--pooled-map` become separate series of one task ("elpv" and "elpv --pooled-map")."""
    settings = {(r["steps"], r.get("augment", "none"), r["machine"]) for r in results}
    if len(settings) != 1:
        raise SystemExit(f"--from-json: the runs differ in steps, augment or machine ({sorted(settings)}): one table "
                         "would mix them")
    out = dict(results[0], tasks={}, pooled_map=False, command=" ; ".join(r["command"] for r in results))
    for result in results:
        for task, measured in result["tasks"].items():
            name = task + (POOLED_SERIES if result.get("pooled_map") else "")
            out["tasks"][name] = merged_task(name, out["tasks"][name], measured) if name in out["tasks"] else measured
    return out


def merged_task(name: str, first: dict, second: dict) -> dict:
    """One task's points from two runs that split its sizes (same question and held-out set, no size twice)."""
    same = ("question", "test_n", "test_classes", "frozen")
    if any(first[key] != second[key] for key in same):
        raise SystemExit(f"--from-json: two runs of {name} differ in question, held-out set or frozen baseline")
    sizes = {p["n"] for p in first["points"]} & {p["n"] for p in second["points"]}
    if sizes:
        raise SystemExit(f"--from-json: two runs measured {name} at N={', '.join(map(str, sorted(sizes)))}; give one of them")
    return dict(first, points=sorted(first["points"] + second["points"], key=lambda p: p["n"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="directory for data, adapters and the ELPV wheel (required to run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 500])
    parser.add_argument("--test", type=int, default=1000, help="held-out images per task")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tasks", nargs="+", choices=("elpv", "line3"), default=["elpv", "line3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast (fast only on CPUs with native bf16)")
    parser.add_argument("--seed", type=int, default=0)
    # Mirroring keeps both tasks' answers true: a part's bin and a cell's type and defects do not depend on handedness.
    parser.add_argument("--augment", choices=("none", "flips"), default="flips")
    parser.add_argument("--pooled-map", action="store_true", help="train each adapter with `--pooled-map` (its own map of "
                        "smol's pooled token)")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: one table and plot of the tasks of earlier runs' --json files")
    add_output_arguments(parser, plot="accuracy against training-set size")
    args = parser.parse_args(argv)
    if args.from_json:
        publish(merged([json.loads(path.read_text()) for path in args.from_json]), args, HEADING, markdown, plot)
        return
    if args.work is None:
        parser.error("--work is required to run the tasks (or give --from-json)")
    args.work.mkdir(parents=True, exist_ok=True)
    from crome_runtime.machine import describe_cpu

    result = {"command": command_line(argv), "machine": f"{platform.node() or 'host'}: {describe_cpu()}",
              "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
              "augment": args.augment, "pooled_map": args.pooled_map, "tasks": {}}
    if "elpv" in args.tasks:
        train_sets, test, counts = elpv_sets(args.work, args.sizes, args.test, args.seed)
        result["tasks"]["elpv"] = run_task("elpv", ELPV_QUESTION, train_sets, test, counts, args)
    if "line3" in args.tasks:
        train_sets, test, counts = line3_sets(args.work, args.sizes, args.test)
        result["tasks"]["line3"] = run_task("line3", LINE3_QUESTION, train_sets, test, counts, args)
    publish(result, args, HEADING, markdown, plot)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
