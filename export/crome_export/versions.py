"""An adapter's versions in a bundle: what `bundle add --replace` keeps, `bundle history` lists and `bundle rollback`
restores (crome_runtime.adapter_versions: the version, the kept files' names, the manifest's records).

Every change goes through multi.write_bundle, like add and remove: the bundle is read with every sha256 checked (a
kept version whose file was altered is refused, naming the file), written beside itself as hard links — a kept
version's files are the very inodes it had when it was current — and committed by one atomic exchange under the
bundle's lock, so a crash at any point leaves the old bundle or the new one. A serving process takes the result
with `POST /v1/adapters/reload`, as after `bundle add`. Torch-free: history and rollback run on the device.
Not here: exporting the replacing adapter (multi.add_adapter), the manifest format (crome_runtime).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from crome_edge.errors import CromeError
from crome_export.bundle import bundle_lock
from crome_export.multi import Member, read_contents, say, write_bundle
from crome_runtime import formats, input_files
from crome_runtime.adapter_entries import AdapterEntry
from crome_runtime.adapter_versions import (KeptVersion, find, restored, retire, short, succession, unkeepable, utc_now,
                                            version_of)
from crome_runtime.manifest import BundleError, Manifest, read_manifest, read_report
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_metadata


def succeed(current: Member, new: Member, keep: int) -> Member:
    """`new` replacing `current` (same name): `current` joins the kept versions (hard links to its files under the kept
    names, its fidelity section kept), the last `keep` of them stay."""
    why = unkeepable(current.entry)
    if why and keep:
        say(f"note: the replaced {current.entry.name} is not kept as a version ({why})")
    versions = succession(current.entry, new.entry, keep, utc_now())
    return _with_history(new, versions, _sources(current))


def _sources(member: Member) -> tuple[dict, dict]:
    """Every version `member` holds, current and kept -> ({version: {role: (path, FileEntry)}}, {version: report})."""
    files = {version_of(member.entry): member.files}
    files |= {v.version: {role: member.kept[name] for role, name in v.files.items()} for v in member.entry.versions}
    reports = {version_of(member.entry): member.report, **member.kept_reports}
    return files, reports


def _with_history(member: Member, versions: list[KeptVersion], sources: tuple[dict, dict]) -> Member:
    """`member` with `versions` kept, their files and reports taken from `sources` (_sources)."""
    files, reports = sources
    kept = {name: files[v.version][role] for v in versions for role, name in v.files.items()}
    return dataclasses.replace(member, entry=dataclasses.replace(member.entry, versions=versions), kept=kept,
                               kept_reports={v.version: reports.get(v.version) for v in versions})


def rollback_adapter(bundle: Path, name: str, version: str | None = None) -> tuple[Path, str, str]:
    """`crome-edge bundle rollback BUNDLE NAME [VERSION]`: kept version VERSION (a unique sha256 prefix; default the
    most recently replaced) becomes adapter NAME again, and the one it replaces becomes a kept version (so a rollback
    can be undone the same way). -> (bundle, restored version, replaced version)."""
    with bundle_lock(bundle, "bundle rollback"):
        current = read_contents(bundle, trained_routes=False)  # every sha256, kept versions' included
        member = _member(current.members, name, current.path)
        target = find(member.entry, version)
        replaced = retire(member.entry, utc_now())  # its history moves to the restored entry
        versions = [replaced] + [v for v in member.entry.versions if v is not target]
        files, reports = _sources(member)
        back = Member(restored(target), files[target.version], reports.get(target.version))
        members = [_with_history(back, versions, (files, reports)) if m is member else m for m in current.members]
        path = write_bundle(current.path, current, members, force=True)
    return path, target.version, replaced.version


def history(bundle: Path, name: str) -> list[dict]:
    """`crome-edge bundle history BUNDLE NAME`: adapter NAME's versions, current first, each with its dates (exported,
    added, replaced), training summary, data recipe (from its adapter file's metadata) and fidelity report section."""
    path = Path(bundle).expanduser()
    manifest = read_manifest(path, verify=False)  # `verify` checks the bytes
    entry = _entry(manifest, name, path)
    report = read_report(path, manifest) or {}
    kept_reports = (report.get(formats.REPORT_KEPT_VERSIONS) or {}).get(name) or {}
    rows = [_row(path, entry, None, (report.get("adapters") or {}).get(name))]
    rows += [_row(path, v.entry, v.replaced, kept_reports.get(v.version)) for v in entry.versions]
    return rows


def _row(path: Path, entry: AdapterEntry, replaced: str | None, section) -> dict:
    section = section if isinstance(section, dict) else {}
    return {"version": version_of(entry), "state": "kept" if replaced else "current",
            "exported": section.get("created"), "added": entry.added, "replaced": replaced,
            "rank": entry.rank, "route": entry.route.to_dict(), "training": entry.training,
            "data_recipe": _data_recipe(path / weights) if (weights := entry.file("weights")) else None,
            "fidelity": section or None, "files": sorted((entry.files or {}).values())}


def _data_recipe(weights: Path) -> dict | None:
    """The `crome-edge data synth` recipe the adapter file records (None: trained on other data, or older)."""
    try:
        text = read_metadata(weights).get(formats.META_TRAIN_DATA_RECIPE)
        return input_files.loads(text, f"{weights.name}'s data recipe") if isinstance(text, str) else None
    except (OSError, SafetensorsHeaderError, json.JSONDecodeError) as error:
        return {"unreadable": f"{weights.name}: {error}"}


def format_history(bundle: Path, name: str, rows: list[dict]) -> str:
    """The text `bundle history` prints: one block per version, current first."""
    lines = [f"adapter {name} in {bundle}: {len(rows)} version(s), current first "
             "(`crome-edge bundle rollback BUNDLE NAME VERSION` restores a kept one)"]
    for row in rows:
        dates = "  ".join(f"{key} {row[key]}" for key in ("exported", "added", "replaced") if row[key])
        lines.append(f"{short(row['version'])}  {row['state']:<7}  rank {row['rank']}  {dates}")
        lines.append(f"    training: {_summary(row['training'])}")
        recipe = row["data_recipe"]
        lines.append(f"    data recipe: {_summary(recipe) if recipe else 'none recorded (not a `data synth` set)'}")
        gates = (row["fidelity"] or {}).get("gates") or {}
        verdicts = ", ".join(f"{gate} {'ok' if result.get('ok') else 'FAILED'}" for gate, result in gates.items()
                             if isinstance(result, dict))
        lines.append(f"    fidelity: {verdicts or 'no report section'}")
    return "\n".join(lines)


def _summary(values: dict) -> str:
    """key=value for a summary's plain values; a list or object by its size (a route's questions can be 256)."""
    parts = []
    for key, value in sorted(values.items()):
        if isinstance(value, (list, dict)):
            parts.append(f"{key}=[{len(value)}]")
        elif value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts) or "none recorded"


def _entry(manifest: Manifest, name: str, path: Path) -> AdapterEntry:
    try:
        return manifest.entry(name)
    except BundleError:
        raise CromeError(f"the bundle {path} has no adapter {name!r:.80} (it has: "
                         f"{', '.join(manifest.adapter_names) or 'none'})") from None


def _member(members: list[Member], name: str, path: Path) -> Member:
    for member in members:
        if member.entry.name == name:
            return member
    have = ", ".join(m.entry.name for m in members) or "none"
    raise CromeError(f"the bundle {path} has no adapter {name!r:.80} (it has: {have}); nothing was changed")

