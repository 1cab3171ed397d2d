"""An adapter's versions in a bundle (crome_export.versions, crome_runtime.adapter_versions): `bundle add --replace`
keeps the replaced adapter as hard links, bounded by --keep; `bundle history` lists the versions; `bundle rollback`
restores one byte for byte (the engine answers exactly as before the replace) and can be undone; `verify` checks the
kept files; every bad input is one line and leaves the bundle unchanged; a failure at the rename step leaves the old
bundle; a server answers every request while a rollback is reloaded.

The tiny colour bundle (v1) and two more versions of the same adapter (same name, other seeds: v2, v3). Only the
replaces export (each takes its adapter's fidelity run); everything else reads and swaps files."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from tests.support.adapters import train_tiny_adapter
from tests.support.bundles import QUESTION, cache_env, colour_image, copy_bundle, tiny_bundle, torch_threads

from crome_edge.errors import CromeError

ROLES = ("adapter_visual.onnx", "adapter_text.onnx", "adapter.safetensors", "acceptance.json", "acceptance.npz")
IMAGES = [colour_image(name, 700 + i) for i, name in enumerate(["red", "green", "blue"] * 3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """{"v1", "v2", "v3": adapter files (all named colour), "original": the v1 bundle, "after": a copy where v2
    replaced v1 with the default keep, "inodes": the v1 files' inodes in that copy before the replace, ...}."""
    from crome_edge.backbones.tiny import build_tiny
    from crome_export.multi import add_adapter
    from crome_export.pipeline import ExportConfig

    paths = tiny_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("versions")
    with cache_env(paths["root"] / "cache"), torch_threads(1):
        versions = {"v1": paths["adapter"]}
        for seed in (2, 3):
            out = work / f"v{seed}" / "colour.safetensors"
            out.parent.mkdir()
            versions[f"v{seed}"] = train_tiny_adapter(build_tiny(seed=0), paths["data"], out, seed=seed, steps=15)
        after = copy_bundle(paths["bundle"], work / "after.bundle")
        inodes = {role: (after / f"colour.{role}").stat().st_ino for role in ROLES}
        add_adapter(after, versions["v2"], ExportConfig(adapter=versions["v2"], threads=1), replace=True, quiet=True)
        yield {**versions, "root": paths["root"], "original": paths["bundle"], "after": after, "inodes": inodes,
               "work": work}


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _sha(path: Path) -> str:
    from crome_runtime.manifest import sha256_file

    return sha256_file(path)


def _answers(bundle: Path) -> list[list[int]]:
    from crome_runtime.engine import Engine, EngineConfig

    engine = Engine.load(bundle, EngineConfig(threads=1, spin=False))
    return [engine.answer(image, QUESTION).token_ids for image in IMAGES]


def _snapshot(bundle: Path) -> dict:
    """Every file of the bundle directory and its bytes' sha256: equal snapshots, unchanged bundle."""
    return {p.name: _sha(p) for p in sorted(bundle.iterdir()) if p.is_file()}


def _leftovers(bundle: Path) -> list[str]:
    """Temporary directories a bundle writer leaves beside the bundle when it fails to clean up."""
    return sorted(p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}."))


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from crome_cli.main import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_replace_keeps_the_replaced_version_as_hard_links(setup):
    after, v1, v2 = setup["after"], _sha(setup["v1"]), _sha(setup["v2"])
    (entry,) = _manifest(after)["adapters"]
    assert entry["sha256"] == v2 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["added"])
    (kept,) = entry["versions"]
    assert kept["sha256"] == v1 and kept["route"] == entry["route"] and kept["replaced"] >= entry["added"]
    assert kept["files"] == {role: f"colour.{v1[:16]}.{plain}" for role, plain in
                             zip(("adapter_visual", "adapter_text", "weights", "acceptance", "acceptance_arrays"), ROLES)}
    for role in ROLES:  # the very files v1 had: same inode, same bytes as the original bundle's
        kept_file = after / f"colour.{v1[:16]}.{role}"
        assert kept_file.stat().st_ino == setup["inodes"][role] and kept_file.stat().st_nlink == 1
        assert _sha(kept_file) == _sha(setup["original"] / f"colour.{role}")
        assert _manifest(after)["files"][kept_file.name]["sha256"] == _sha(kept_file)
    assert _sha(after / "colour.adapter.safetensors") == v2  # the bundle's weights are the adapter file itself
    report = json.loads((after / "report.json").read_text())
    original = json.loads((setup["original"] / "report.json").read_text())
    assert report["kept_versions"] == {"colour": {v1: original["adapters"]["colour"]}} and v1 != v2


def test_history_lists_versions_current_first(setup, capsys):
    after, v1, v2 = setup["after"], _sha(setup["v1"]), _sha(setup["v2"])
    code, out, _ = _cli(["bundle", "history", after, "colour", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [(r["version"], r["state"]) for r in rows] == [(v2, "current"), (v1, "kept")]
    assert rows[0]["replaced"] is None and rows[1]["replaced"] is not None
    assert all(r["exported"] and r["added"] for r in rows)
    assert rows[1]["training"] == {"val_fraction": 0.25, "split_seed": 0}  # what training recorded
    assert rows[1]["data_recipe"] is None  # a hand-made data set: no `data synth` recipe
    assert rows[1]["fidelity"]["gates"]["fp32_parity"]["ok"]
    assert rows[1]["fidelity"] == json.loads((setup["original"] / "report.json").read_text())["adapters"]["colour"]
    code, out, _ = _cli(["bundle", "history", after, "colour"], capsys)
    lines = out.splitlines()
    assert code == 0 and "2 version(s), current first" in lines[0]
    assert lines[1].startswith(f"{v2[:12]}  current") and "added 20" in lines[1] and "replaced" not in lines[1]
    assert lines[5].startswith(f"{v1[:12]}  kept") and "replaced 20" in lines[5]
    assert lines[6] == "    training: split_seed=0 val_fraction=0.25"
    assert "fp32_parity ok" in lines[8]
    code, out, _ = _cli(["bundle", "list", after], capsys)
    assert json.loads(out)[0]["kept_versions"] == [v1]


def test_rollback_restores_the_files_and_the_answers_and_can_be_undone(setup, tmp_path, capsys):
    from crome_runtime.verify import verify_bundle

    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    v1, v2 = _sha(setup["v1"]), _sha(setup["v2"])
    before, replaced = _answers(setup["original"]), _answers(bundle)
    assert before != replaced  # the test means something: v2 answers otherwise
    inodes = {role: (bundle / f"colour.{v1[:16]}.{role}").stat().st_ino for role in ROLES}
    code, out, err = _cli(["bundle", "rollback", bundle, "colour"], capsys)  # default: the most recent kept
    assert code == 0 and out.strip() == str(bundle.absolute())
    assert f"to version {v1[:12]}" in err and f"bundle rollback {bundle} colour {v2[:12]}" in err
    for role in ROLES:  # byte-identical to the bundle before the replace, and the same inodes (hard links)
        assert _sha(bundle / f"colour.{role}") == _sha(setup["original"] / f"colour.{role}")
        assert (bundle / f"colour.{role}").stat().st_ino == inodes[role]
        assert not (bundle / f"colour.{v1[:16]}.{role}").exists() and (bundle / f"colour.{v2[:16]}.{role}").is_file()
    assert _answers(bundle) == before
    (entry,) = _manifest(bundle)["adapters"]
    assert entry["sha256"] == v1 and [v["sha256"] for v in entry["versions"]] == [v2]
    assert entry["added"] == _manifest(setup["original"])["adapters"][0]["added"]  # when it first came in
    report = json.loads((bundle / "report.json").read_text())
    original = json.loads((setup["original"] / "report.json").read_text())
    assert report["adapters"]["colour"] == original["adapters"]["colour"] and list(report["kept_versions"]["colour"]) == [v2]
    assert verify_bundle(bundle)["kept_versions"] == {"colour": [v2]}
    code, _, err = _cli(["bundle", "rollback", bundle, "colour", v2[:7]], capsys)  # undo, by prefix
    assert code == 0 and f"to version {v2[:12]}" in err
    assert _answers(bundle) == replaced and _sha(bundle / "colour.adapter.safetensors") == v2
    assert [r["version"] for r in json.loads(_cli(["bundle", "history", bundle, "colour", "--json"], capsys)[1])] == [v2, v1]
    assert _leftovers(bundle) == []


def test_keep_bounds_the_history_and_prunes_the_oldest(setup, tmp_path, capsys, monkeypatch):
    """Two more replaces (exports): v3 over v2 keeps both earlier versions; v2 over v3 with --keep 1 keeps only v3
    (v2 is current again, not kept twice; v1's files leave the bundle)."""
    monkeypatch.setenv("CROME_EDGE_CACHE", str(setup["root"] / "cache"))
    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    v1, v2, v3 = (_sha(setup[v]) for v in ("v1", "v2", "v3"))
    base = ["bundle", "add", bundle, "--replace", "--threads", "1", "--adapter"]
    with torch_threads(1):
        inode = (bundle / "colour.adapter_visual.onnx").stat().st_ino
        code, _, err = _cli(base + [setup["v3"]], capsys)
        assert code == 0 and f"kept versions of colour: {v2[:12]}, {v1[:12]} (`crome-edge bundle history" in err
        entry = _manifest(bundle)["adapters"][0]
        assert entry["sha256"] == v3 and [v["sha256"] for v in entry["versions"]] == [v2, v1]
        assert (bundle / f"colour.{v2[:16]}.adapter_visual.onnx").stat().st_ino == inode
        assert _cli(base + [setup["v2"], "--keep", "1"], capsys)[0] == 0
    entry = _manifest(bundle)["adapters"][0]
    assert entry["sha256"] == v2 and [v["sha256"] for v in entry["versions"]] == [v3]
    assert not [p.name for p in bundle.iterdir() if v1[:16] in p.name or v2[:16] in p.name]
    assert set(json.loads((bundle / "report.json").read_text())["kept_versions"]["colour"]) == {v3}
    assert _cli(["verify", bundle, "--threads", "1"], capsys)[0] == 0


def test_the_default_keeps_three_most_recent_first():
    """Five replaces in a row (succession, what `bundle add --replace` applies): the default keeps the last three."""
    from crome_runtime.adapter_entries import AdapterEntry, Route
    from crome_runtime.adapter_versions import DEFAULT_KEPT_VERSIONS, succession

    shas = [f"{i:x}" * 64 for i in range(1, 7)]
    current = AdapterEntry(name="colour", sha256=shas[0], rank=4, route=Route(["What?"]))
    for sha in shas[1:]:
        new = AdapterEntry(name="colour", sha256=sha, rank=4, route=Route(["What?"]))
        new.versions = succession(current, new, DEFAULT_KEPT_VERSIONS, "2026-12-05T00:00:00Z")
        current = new
    assert DEFAULT_KEPT_VERSIONS == 3
    assert [v.version for v in current.versions] == [shas[4], shas[3], shas[2]]
    assert current.versions[0].entry.files["weights"] == f"colour.{shas[4][:16]}.adapter.safetensors"
    data = AdapterEntry.from_dict(current.to_dict()).to_dict()  # the manifest form round-trips
    assert data == current.to_dict()


def test_ambiguous_and_unknown_versions_are_refused_by_name():
    from crome_runtime.adapter_entries import AdapterEntry, Route
    from crome_runtime.adapter_versions import find, retire
    from crome_runtime.manifest import BundleError

    entry = AdapterEntry(name="colour", sha256="c" * 64, rank=4, route=Route(["What?"]))
    entry.versions = [retire(AdapterEntry(name="colour", sha256=s, rank=4, route=Route(["What?"])), "d")
                      for s in ("ab" * 32, "ac" * 32)]
    assert find(entry, "ab").version == "ab" * 32 and find(entry, None).version == "ab" * 32
    with pytest.raises(BundleError, match=r"version a is ambiguous: it starts 2 kept versions of colour "
                                          r"\(ababababab.., acacacacac..\); give more digits"):
        find(entry, "a")
    with pytest.raises(BundleError, match=r"no kept version cc \(that is the current version\)"):
        find(entry, "cc")


def test_bad_inputs_are_one_line_and_leave_the_bundle_unchanged(setup, tmp_path, capsys):
    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    v1, v2 = _sha(setup["v1"]), _sha(setup["v2"])
    frozen = copy_bundle(setup["original"], tmp_path / "fresh.bundle")  # exported: no history yet
    before, fresh = _snapshot(bundle), _snapshot(frozen)
    cases = [
        (["bundle", "rollback", bundle, "colour", "deadbeef"],
         f"adapter colour has no kept version deadbeef; its kept versions are {v1[:12]}"),
        (["bundle", "rollback", bundle, "colour", v2[:10]], "\\(that is the current version\\)"),
        (["bundle", "rollback", bundle, "colour", "v1"], "version 'v1' is not a sha256 prefix \\(hex digits\\)"),
        (["bundle", "rollback", bundle, "nope"], "the bundle .* has no adapter 'nope' \\(it has: colour\\)"),
        (["bundle", "history", bundle, "nope"], "has no adapter 'nope' \\(it has: colour\\)"),
        (["bundle", "rollback", frozen, "colour"], "adapter colour has no kept versions to roll back to"),
        (["bundle", "add", bundle, "--adapter", setup["v1"], "--replace", "--keep", "21"],
         "--keep 21 is out of range: keep 0 to 20"),
        (["bundle", "add", bundle, "--adapter", setup["v1"], "--replace", "--keep", "-1"], "--keep -1 is out of range"),
        (["bundle", "add", bundle, "--adapter", setup["v1"], "--keep", "2"], "--keep applies to --replace"),
    ]
    for args, message in cases:
        code, out, err = _cli(args, capsys)
        assert code == 2 and out == "", (args, out)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), (args, err)
    assert _snapshot(bundle) == before and _snapshot(frozen) == fresh
    assert _leftovers(bundle) == [] and _leftovers(frozen) == []


def test_a_corrupted_kept_version_is_caught_by_verify_and_refused_by_rollback(setup, tmp_path, capsys):
    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    v1 = _sha(setup["v1"])
    kept = bundle / f"colour.{v1[:16]}.adapter_text.onnx"
    data = bytearray(kept.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    kept.write_bytes(bytes(data))
    before = _snapshot(bundle)
    why = (f"bundle file {kept.name} \\(kept version {v1[:12]} of adapter colour\\) was altered \\(sha256 differs "
           "from the manifest\\)")
    for args in (["verify", bundle, "--threads", "1"], ["bundle", "rollback", bundle, "colour"]):
        code, out, err = _cli(args, capsys)
        assert code == 2 and re.search(why, err) and len(err.strip().splitlines()) == 1, (args, err)
    assert _snapshot(bundle) == before and _leftovers(bundle) == []


def test_a_failure_at_the_rename_leaves_the_old_bundle(setup, tmp_path, monkeypatch):
    """The commit's rename step fails (the atomic exchange, then the two-rename fallback's second rename): the
    bundle is the old one, whole, and nothing is left beside it; the rollback then succeeds when asked again."""
    import crome_export.bundle as writer
    from crome_export.versions import rollback_adapter

    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    before, v1 = _snapshot(bundle), _sha(setup["v1"])

    def exchange_fails(a, b):
        raise OSError(5, "Input/output error (injected)", str(b))

    monkeypatch.setattr(writer, "exchange", exchange_fails)
    with pytest.raises(CromeError, match="moving the bundle into place failed .* the existing bundle at .* is unchanged"):
        rollback_adapter(bundle, "colour")
    assert _snapshot(bundle) == before and _leftovers(bundle) == []

    renames = []

    def second_rename_fails(src, dst):  # old bundle moved aside, then the new one cannot take its place
        renames.append((src, dst))
        if len(renames) == 2:
            raise OSError(5, "Input/output error (injected)", str(dst))
        return real_rename(src, dst)

    real_rename = os.rename
    monkeypatch.setattr(writer, "exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(CromeError, match="moving the bundle into place failed"):
        rollback_adapter(bundle, "colour")
    monkeypatch.setattr(os, "rename", real_rename)
    assert len(renames) == 3 and renames[2][0] == renames[0][1]  # the old bundle was put back
    assert _snapshot(bundle) == before and _leftovers(bundle) == []
    monkeypatch.undo()
    rollback_adapter(bundle, "colour")
    assert _manifest(bundle)["adapters"][0]["sha256"] == v1


def test_serve_answers_every_request_while_a_rollback_is_reloaded(setup, tmp_path):
    """A client asks in a bounded loop from a thread while `bundle rollback` swaps the served bundle and POST
    /v1/adapters/reload takes it: every request is a 200, each answer is v2's or v1's and says so (the `crome`
    extension's adapter_version), the last ones v1's."""
    import httpx
    from tests.support.serve import png_data_uri, serving

    from crome_export.versions import rollback_adapter
    from crome_runtime.engine import Engine, EngineConfig

    bundle = copy_bundle(setup["after"], tmp_path / "served.bundle")
    v1, v2 = _sha(setup["v1"]), _sha(setup["v2"])
    old = Engine.load(setup["original"], EngineConfig(threads=1, spin=False))
    new = Engine.load(bundle, EngineConfig(threads=1, spin=False))
    image = next((im for im in IMAGES if old.answer(im, QUESTION).text != new.answer(im, QUESTION).text), None)
    assert image is not None, "v1 and v2 answer every test image alike: the test could not tell them apart"
    texts = {old.answer(image, QUESTION).text: "v1", new.answer(image, QUESTION).text: "v2"}
    headers = {"Authorization": "Bearer k3y-for-the-admin"}
    body = {"explain": True, "messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": png_data_uri(image)}}]}]}
    results, started, stop = [], threading.Event(), threading.Event()

    def client():
        with httpx.Client(timeout=120) as http:
            for _ in range(200):  # bounded: the main thread stops it after the reload
                response = http.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                reply = response.json() if response.status_code == 200 else {}
                text = reply["choices"][0]["message"]["content"] if reply else None
                results.append((response.status_code, texts.get(text, text), reply.get("crome", {}).get("adapter_version")))
                started.set()
                if stop.is_set() and results[-1][1] == "v1":
                    return

    with serving(bundle, api_key=headers["Authorization"][7:]) as (server, base):
        thread = threading.Thread(target=client)
        thread.start()
        assert started.wait(120)
        rollback_adapter(bundle, "colour")
        response = httpx.post(f"{base}/v1/adapters/reload", headers=headers, timeout=120)
        stop.set()
        thread.join(300)
        assert not thread.is_alive()
        assert response.status_code == 200 and response.json()["replaced"] == ["colour"], response.text
        cards = httpx.get(f"{base}/v1/adapters", headers=headers, timeout=30).json()["data"]
        assert [(c["name"], c["sha256"]) for c in cards] == [("colour", v1)]
    assert results and all(status == 200 for status, _, _ in results), results
    assert all(version == {"v1": v1, "v2": v2}.get(which) for _, which, version in results), results
    served = [which for _, which, _ in results]
    assert set(served) <= {"v1", "v2"} and served[0] == "v2" and served[-1] == "v1"
    assert served == sorted(served, key=lambda w: w == "v1")  # v2 until the reload, v1 after: never back


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["adapters"][0].__setitem__("versions", "v1"), "`versions` must be a list of at most 20"),
    (lambda m: m["adapters"][0]["versions"].append(dict(m["adapters"][0]["versions"][0])), "keeps one version twice"),
    (lambda m: m["adapters"][0]["versions"][0]["files"].__setitem__("adapter_visual", "vision.onnx"),
     "names files other than its own"),
    (lambda m: m["adapters"][0]["versions"][0].__setitem__("replaced", 5), "has malformed fields"),
    (lambda m: m["adapters"][0]["versions"][0].pop("files"), "every kept version must be an object with its files"),
    (lambda m: m["files"].pop(m["adapters"][0]["versions"][0]["files"]["weights"]), "which `files` does not list"),
    (lambda m: m["adapters"][0].__setitem__("added", 1), "`added` must be a date string"),
])
def test_malformed_version_records_are_refused(setup, tmp_path, edit, message):
    """A hand-edited or damaged `versions` record is refused when the manifest is read, saying which adapter."""
    from crome_runtime.manifest import BundleError, read_manifest

    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    data = _manifest(bundle)
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=re.escape(message)):
        read_manifest(bundle, verify=False)


def test_a_bundle_without_history_reads_and_writes_as_before(setup):
    """The optional keys: a manifest without `versions` has no history; an entry without kept versions writes no
    `versions` key (bundles without history keep the manifest they had)."""
    from crome_runtime.manifest import Manifest, read_manifest

    data = _manifest(setup["original"])
    data["adapters"][0].pop("added")  # as bundles exported before this feature
    manifest = Manifest.from_json(json.dumps(data))
    assert manifest.adapters[0].versions == [] and manifest.adapters[0].added is None
    assert json.loads(manifest.to_json())["adapters"] == data["adapters"]
    assert read_manifest(setup["after"]).adapters[0].versions[0].version == _sha(setup["v1"])


def test_history_and_rollback_run_where_torch_and_onnx_are_not_installed(setup, tmp_path):
    """On the device: `bundle history` and `bundle rollback` in a process where torch, transformers, onnx and gguf
    cannot be imported (the export side's own modules can: they import those only where an export needs them)."""
    import subprocess
    import sys

    from tests.support.torch_blocked import torch_blocked_env

    heavy = ("torch", "transformers", "onnx", "onnxscript", "gguf")
    bundle = copy_bundle(setup["after"], tmp_path / "b.bundle")
    script = (f"import json, sys\nfrom crome_cli.main import main\n"
              f"codes = [main(['bundle', 'history', sys.argv[1], 'colour']), main(['bundle', 'rollback', sys.argv[1], "
              f"'colour'])]\nprint(json.dumps({{'codes': codes, 'loaded': sorted(m for m in sys.modules "
              f"if m.split('.')[0] in {heavy!r})}}))")
    done = subprocess.run([sys.executable, "-c", script, str(bundle)], env=torch_blocked_env(tmp_path, heavy),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"codes": [0, 0], "loaded": []}
    assert _manifest(bundle)["adapters"][0]["sha256"] == _sha(setup["v1"])
