"""`crome-edge verify BUNDLE`: the bundle's own acceptance set, run by the torch-free engine on this device.

Loads the bundle as `run` does (sha256 of every file, the acceptance set's included), preprocesses the
acceptance frames with this device's preprocessing, compares every stage and every greedy answer with the
PyTorch references the exporter stored, and applies the export's gates at the bundle's precision
(fidelity.py). Returns a report with the schema and the table of export's report.json, plus where it ran.
Not here: the command line (crome_cli.verify), the rules (fidelity.py), the files (acceptance.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from crome_runtime.acceptance import read_acceptance, require_acceptance
from crome_runtime.engine import Engine, EngineConfig
from crome_runtime.fidelity import MeasureConfig, measure, pipeline_precision, report_dict
from crome_runtime.manifest import read_manifest


def verify_bundle(path: str | os.PathLike, config: EngineConfig | None = None, progress=None) -> dict:
    """-> the verify report: {"command", "bundle", "precision", "adapters": {NAME: that adapter's report, with the
    schema and the table of export's report.json}, "kept_versions": {NAME: [version, ...]} (their files' sha256
    checked), "gates": {"NAME: gate": result}} (gates[...]["ok"] says what passed). Every adapter is verified on its own acceptance set, pinned (whatever the routes say). config: how
    the engine runs (provider, threads; the sha256 check stays on). BundleError when the bundle is missing,
    altered, or an adapter has no acceptance set; EngineError/ProviderError when it cannot run as asked."""
    config = config or EngineConfig()
    path = Path(path).expanduser()
    say = progress or (lambda message: None)
    manifest = read_manifest(path, verify=False)
    for entry in manifest.adapters:  # refused before hashing and opening the graphs
        require_acceptance(path, manifest, _acceptance_names(entry))
    engine = Engine.load(path, config)
    reports = {}
    for entry in engine.manifest.adapters:
        with engine.pin(entry.name):
            say(f"adapter {entry.name}:")
            reports[entry.name] = _verify_one(engine, path, config, _acceptance_names(entry), say)
    if not reports:
        say(f"bundle {engine.bundle.name}: no adapters, the frozen backbone alone (its files' sha256 checked)")
    # kept versions (`bundle rollback` restores them): Engine.load checked every file of theirs against its sha256
    kept = {e.name: [v.entry.sha256 for v in e.versions] for e in engine.manifest.adapters if e.versions}
    return {"command": "crome-edge verify", "bundle": str(path), "precision": engine.manifest.precision,
            "adapters": reports, "kept_versions": kept,
            "gates": {f"{name}: {gate}": result for name, report in reports.items()
                      for gate, result in report["gates"].items()}}


def verify_adapter(path: str | os.PathLike, name: str, config: EngineConfig | None = None, progress=None) -> dict:
    """One adapter of a bundle on its own acceptance set (how `bundle add` checks the adapter it adds on the bundle's
    backbone files before the bundle is swapped) -> that adapter's verify report."""
    config = config or EngineConfig()
    path = Path(path).expanduser()
    engine = Engine.load(path, config)
    entry = engine.manifest.entry(name)  # BundleError when there is none
    with engine.pin(name):
        return _verify_one(engine, path, config, _acceptance_names(entry), progress or (lambda message: None))


def _acceptance_names(entry) -> tuple[str, str]:
    """An adapter's acceptance files (.json, .npz)."""
    return entry.file("acceptance"), entry.file("acceptance_arrays")


def _verify_one(engine: Engine, path: Path, config: EngineConfig, names: tuple[str, str], say) -> dict:
    acceptance = read_acceptance(path, engine.manifest, names)
    say(f"bundle {engine.bundle.name} on {engine.providers.summary()}: {len(acceptance.references)} prompts about "
        f"{len(acceptance.frames)} frames")
    frames = [engine.frame(frame, "bgr") for frame in acceptance.frames]  # this device's preprocessing
    precision = engine.manifest.precision
    fidelity = measure({pipeline_precision(engine): engine}, frames, acceptance.references,
                       MeasureConfig(acceptance.max_new_tokens, acceptance.threshold_points, acceptance.source,
                                     "the acceptance set's prompts have no labels"), progress=say)
    return report_dict(fidelity, {
        "command": "crome-edge verify",
        "bundle": str(path),
        "precision": precision,
        "exported_on": (engine.bundle.report or {}).get("measured_on"),
        "engine": {"providers": engine.providers.to_dict(), "threads": config.threads,
                   "adapter_backend": engine.adapter_backend, "decoder_backend": engine.decoder_backend},
        "inputs": {"acceptance": acceptance.source, "prompts": len(acceptance.references),
                   "frames": len(acceptance.frames), "max_new_tokens": acceptance.max_new_tokens},
    })
