"""Held-out accuracy of several adapters on one backbone, through real `crome-edge serve` processes and the official
`openai` client: routed vs single-adapter bundles, the frozen backbone's own questions, an adapter on everything,
and an adapter trained with `--replay` — and a hot-swap under that load.

    python benchmarks/routed_accuracy.py --bundle both.bundle --single line3=line3.bundle --single line5=line5.bundle \
        --replay line3=line3r.bundle [--n 1000] [--pretrain-n 1000] [--threads 1] [--clients 2] \
        [--swap line5=runs/line5.safetensors] [--json out.json] [--results benchmarks/RESULTS.md]

Question families (held-out *test* splits, seeds disjoint from every training set; crome_edge.synth): one per line
task of the multi-adapter bundle (line3, line5: one question each) and the backbone's pretraining questions (one of
five per frame, balanced). Rows, each one server process started for its bundle and stopped after it:

  routed           --bundle, `model` = the server's id: every family goes where the bundle's routes send it; the
                   adapter each answer names (`timings.adapter`) is checked against the family's expected one
  frozen           --bundle, `model: none` on every family: the backbone alone
  NAME everywhere  --bundle, `model: NAME` on the pretraining family: what an adapter does to the other answers
  single NAME      --single NAME=B: the adapter's own family through a bundle of that adapter alone
  routed, NAME hot-swapped
                   --swap NAME=FILE, last on the --bundle server: NAME's family through the routes again while
                   `crome-edge bundle add BUNDLE --adapter FILE --replace` (a retrained NAME) and POST
                   /v1/adapters/reload happen --swap-after seconds in (a copy of --bundle is served, so the given
                   bundle is not changed); every request must still be answered, by NAME (the old or the new one)
  replay           --replay TASK=B: a bundle whose one adapter was trained with --replay, on its line family + pretraining

Accuracy is exact match after the runtime's normalisation (crome_runtime.prompt.normalize_answer), like `eval`.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx  # imported here, before any client thread: a first import racing another thread half-initialises it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import add_output_arguments, command_line, publish  # noqa: E402
from bench_serve import wait_ready  # noqa: E402

PRETRAIN = "pretrain"
API_KEY = "routed-accuracy-admin-key"  # loopback only, for the admin reload endpoint
HEADING = "## Several adapters, held-out accuracy through serve — `benchmarks/routed_accuracy.py`"


def held_out(task: str, n: int) -> list[dict]:
    """The test split's first n samples of a task as {"question", "answer", "image" (data URI)}."""
    from crome_edge.synth.samples import iter_split

    rows = []
    for sample in iter_split(task, "test", n, questions="one"):
        ok, png = cv2.imencode(".png", sample.image)
        if not ok:
            raise SystemExit("OpenCV could not encode a frame as PNG")
        rows.append({"question": sample.question, "answer": sample.answer,
                     "image": "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()})
    return rows


class Server:
    """`crome-edge serve --bundle B --camera none` on a free loopback port, with an API key (admin reload)."""

    def __init__(self, bundle: Path, threads: int | None, work: Path):
        import openai

        key_file = work / "key.txt"
        key_file.write_text(API_KEY + "\n")
        port = _free_port()
        command = [sys.executable, "-m", "crome_cli", "serve", "--bundle", str(bundle), "--camera", "none",
                   "--port", str(port), "--api-key-file", str(key_file), "--log-level", "warning", "--queue-size", "64"]
        if threads:
            command += ["--threads", str(threads)]
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, stderr=sys.stderr)
        try:
            wait_ready(self.base, self.process, timeout=600)
        except BaseException:
            self.stop()
            raise
        self.client = openai.OpenAI(base_url=f"{self.base}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        self.model_id = self.client.models.list().data[0].id

    def ask(self, row: dict, model: str | None) -> dict:
        """One answer: {"answer", "adapter", "ok"} (ok: HTTP 200 with an answer), or the error it got."""
        try:
            response = self.client.chat.completions.create(model=model or self.model_id, messages=[{
                "role": "user", "content": [{"type": "text", "text": row["question"]},
                                            {"type": "image_url", "image_url": {"url": row["image"]}}]}])
        except Exception as error:  # noqa: BLE001 — any failure is a lost request, counted and reported
            return {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
        body = response.to_dict()
        return {"ok": True, "answer": body["choices"][0]["message"]["content"], "adapter": body["timings"]["adapter"]}

    def reload(self) -> dict:
        response = httpx.post(f"{self.base}/v1/adapters/reload", headers={"Authorization": f"Bearer {API_KEY}"},
                              timeout=600)
        return {"status": response.status_code, **response.json()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ask_all(server: Server, rows: list[dict], model: str | None, clients: int) -> list[dict]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda row: server.ask(row, model), rows))
    print(f"  {len(rows)} answers (model {model or server.model_id}) in {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)
    return answers


UNCHECKED = object()  # scored(): the answers' adapter is not checked (a single-adapter bundle answers everything)


def scored(rows: list[dict], answers: list[dict], expected_adapter=UNCHECKED) -> dict:
    """Accuracy, lost requests, and (given the adapter every answer must come from; None = the frozen backbone)
    how many answers came from another."""
    from crome_runtime.prompt import normalize_answer

    lost = [a for a in answers if not a["ok"]]
    right = sum(a["ok"] and normalize_answer(a["answer"]) == normalize_answer(r["answer"]) for r, a in zip(rows, answers))
    result = {"n": len(rows), "correct": right, "accuracy": right / max(len(rows), 1), "lost": len(lost),
              "errors": sorted({a["error"] for a in lost})[:3]}
    if expected_adapter is not UNCHECKED:
        result["misrouted"] = sum(a["ok"] and a["adapter"] != expected_adapter for a in answers)
    return result


def routed_pass(server: Server, families: dict, routes: dict, args) -> tuple[dict, list]:
    """Every family with the bundle's routes, interleaved (a line3 frame, a line5 frame, a pretraining frame, ...).
    -> ({family: score}, the pretraining answers)."""
    order = [(family, i) for i in range(max(len(rows) for rows in families.values()))
             for family, rows in families.items() if i < len(rows)]
    answers = ask_all(server, [families[f][i] for f, i in order], None, args.clients)
    by_family: dict = {family: [None] * len(rows) for family, rows in families.items()}
    for (family, i), answer in zip(order, answers):
        by_family[family][i] = answer
    scores = {family: scored(families[family], by_family[family], routes[family]) for family in families}
    return scores, by_family[PRETRAIN]


def swap_pass(server: Server, families: dict, args, bundle: Path) -> dict:
    """--swap NAME=FILE: NAME's family asked again through the routes while `bundle add --replace FILE` and the
    reload happen --swap-after seconds in. -> {"score", "swap"}: every answer must still come, from NAME; the swap
    record says when (seconds into the pass) the reload finished and when the last answer came."""
    name, _, file = args.swap.partition("=")
    record: dict = {"adapter": name, "file": file}
    started = time.perf_counter()
    swapper = threading.Thread(target=_swap, args=(server, bundle, name, Path(file), args, record, started),
                               daemon=True)
    swapper.start()
    answers = ask_all(server, families[name], None, args.clients)
    record["pass_s"] = round(time.perf_counter() - started, 1)
    swapper.join()
    return {"score": scored(families[name], answers, name), "swap": record}


def _swap(server: Server, bundle: Path, name: str, adapter: Path, args, record: dict, pass_started: float) -> None:
    """`bundle add --replace` of `adapter` as `name` into the served bundle, then the reload, timed."""
    time.sleep(args.swap_after)
    started = time.perf_counter()
    staged = bundle.parent / f"{name}.safetensors"  # the adapter's name in a bundle is its file name
    shutil.copyfile(adapter, staged)
    done = subprocess.run([sys.executable, "-m", "crome_cli", "bundle", "add", str(bundle), "--adapter",
                           str(staged), "--replace", "--eval-limit", str(args.swap_eval_limit), "--threads", "1"],
                          capture_output=True, text=True)
    record["bundle_add_s"] = round(time.perf_counter() - started, 1)
    record["bundle_add_rc"] = done.returncode
    if done.returncode:
        record["bundle_add_error"] = done.stderr[-2000:]
        return
    started = time.perf_counter()
    record["reload"] = server.reload()
    record["reload_s"] = round(time.perf_counter() - started, 3)
    record["reload_done_at_s"] = round(time.perf_counter() - pass_started, 1)


def run(args) -> dict:
    singles = dict(value.split("=", 1) for value in args.single)
    families = {name: held_out(name, args.n) for name in singles}
    families[PRETRAIN] = held_out(PRETRAIN, args.pretrain_n)
    result: dict = {"n": args.n, "pretrain_n": args.pretrain_n, "rows": {}, "threads": args.threads,
                    "clients": args.clients}
    with tempfile.TemporaryDirectory(prefix="routed-accuracy-") as tmp:
        work = Path(tmp)
        served = work / Path(args.bundle).name
        shutil.copytree(args.bundle, served)  # --swap edits the served copy, never the given bundle
        server = Server(served, args.threads, work)
        try:
            adapters = set(server.client.models.list().to_dict()["data"][0]["adapters"])
            routes = {family: family if family in adapters else None for family in families}  # None: frozen
            started = time.perf_counter()
            scores, routed_pretrain = routed_pass(server, families, routes, args)
            result["routed_seconds"] = round(time.perf_counter() - started, 1)
            result["rows"]["routed"] = scores
            frozen = {family: ask_all(server, rows, "none", args.clients) for family, rows in families.items()}
            result["rows"]["frozen"] = {family: scored(families[family], frozen[family], None) for family in families}
            result["routed_pretrain_answers_identical_to_frozen"] = all(
                a["ok"] and b["ok"] and a["answer"] == b["answer"] for a, b in zip(routed_pretrain, frozen[PRETRAIN]))
            for name in sorted(adapters & set(singles)):
                answers = ask_all(server, families[PRETRAIN], name, args.clients)
                result["rows"][f"{name} everywhere"] = {PRETRAIN: scored(families[PRETRAIN], answers, name)}
            if args.swap:  # last: it changes the served copy
                swapped = swap_pass(server, families, args, served)
                result["rows"][f"routed, {swapped['swap']['adapter']} hot-swapped"] = {
                    swapped["swap"]["adapter"]: swapped["score"]}
                result["swap"] = swapped["swap"]
        finally:
            server.stop()
        for name, bundle in singles.items():
            server = Server(Path(bundle), args.threads, work)
            try:
                result["rows"][f"single {name}"] = {name: scored(families[name], ask_all(server, families[name], None,
                                                                                           args.clients))}
            finally:
                server.stop()
        if args.replay:
            family, _, bundle = args.replay.partition("=")
            server = Server(Path(bundle), args.threads, work)
            try:
                result["rows"]["replay"] = {f: scored(families[f], ask_all(server, families[f], None, args.clients))
                                            for f in (family, PRETRAIN)}
            finally:
                server.stop()
    result["machine"] = _machine()
    return result


def _machine() -> dict:
    from crome_runtime.machine import describe_cpu

    return {"cpu": describe_cpu(), "python": platform.python_version(), "load_average": list(os.getloadavg())}


def markdown(result: dict) -> str:
    families = list(dict.fromkeys(f for row in result["rows"].values() for f in row))
    lines = [HEADING, "", f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']['model']} ({result['machine']['cpu']['arch']}; "
             f"{', '.join(k for k, v in result['machine']['cpu']['features'].items() if v)}; int8 kernels "
             f"{result['machine']['cpu']['int8_kernels']}), onnxruntime {result['machine']['cpu']['onnxruntime']}; "
             f"load average at the end {[round(x, 2) for x in result['machine']['load_average']]}; serve "
             f"--threads {result['threads']}, {result['clients']} concurrent clients", "",
             "| row | " + " | ".join(f"{f} accuracy" for f in families) + " | lost requests |",
             "|---|" + "---:|" * len(families) + "---:|"]
    for name, row in result["rows"].items():
        cells = [f"{row[f]['accuracy']:.1%} ({row[f]['correct']}/{row[f]['n']})" if f in row else "—" for f in families]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(s['lost'] for s in row.values())} |")
    misrouted = sum(s.get("misrouted", 0) for s in result["rows"]["routed"].values())
    lines += ["", f"Routed pass: {result['routed_seconds']} s, {misrouted} answers from another adapter than the route's; "
              f"pretraining answers routed = frozen, answer for answer: {result['routed_pretrain_answers_identical_to_frozen']}."]
    if result.get("swap"):
        lines.append(f"Hot-swap: {json.dumps(result['swap'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="the bundle of several adapters")
    parser.add_argument("--single", action="append", default=[], metavar="NAME=BUNDLE",
                        help="a bundle of adapter NAME alone; NAME is also the line task whose test split it answers")
    parser.add_argument("--replay", metavar="TASK=BUNDLE",
                        help="a bundle whose one adapter was trained on line task TASK with --replay")
    parser.add_argument("--n", type=int, default=1000, help="held-out frames per line task")
    parser.add_argument("--pretrain-n", type=int, default=1000, help="held-out pretraining questions (one per frame)")
    parser.add_argument("--threads", type=int, default=1, help="serve --threads")
    parser.add_argument("--clients", type=int, default=2, help="requests in flight")
    parser.add_argument("--swap", metavar="NAME=FILE", help="bundle add --replace FILE as NAME + reload under load")
    parser.add_argument("--swap-after", type=float, default=10.0, help="seconds into the swap pass")
    parser.add_argument("--swap-eval-limit", type=int, default=20, help="bundle add --eval-limit")
    add_output_arguments(parser, plot=None)  # a table says it; nothing to plot
    args = parser.parse_args(argv)
    if not args.single:
        parser.error("give at least one --single NAME=BUNDLE (the adapters' line tasks)")
    result = run(args)
    result["command"] = command_line(argv)
    publish(result, args, HEADING, markdown, plot=None)
    lost = sum(s["lost"] for row in result["rows"].values() for s in row.values())
    return 1 if lost or (result.get("swap") and result["swap"].get("bundle_add_rc")) else 0


if __name__ == "__main__":
    raise SystemExit(main())
