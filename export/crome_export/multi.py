"""Bundles with several adapters on one backbone: `export --adapter a --adapter b`, `bundle add`, `bundle remove`.

Each adapter is exported alone by the ordinary pipeline (pipeline.export_bundle: its graphs, its fidelity
report measured on the runtime, its acceptance set) into a temporary single-adapter bundle; the backbone
parts come from the export cache, so an adapter for a backbone already exported takes seconds. The bundles
are then merged file by file (docs/architecture.md §4, crome_runtime.adapter_entries): the backbone's files once
(the first member's), each adapter's files under `NAME.`, its routes
and its report section, into a version-2 bundle written by BundleWriter (hard links, one atomic exchange),
so an interrupted or refused change leaves the bundle as it was. An adapter whose own export came out with other
bytes for a backbone file (another int8 calibration, a newer exporter) joins only if its acceptance set passes on
the bundle's files. Refused before anything is written: an
adapter trained for another backbone (the fingerprint hint), two adapters with one name, overlapping
routes (which question, which adapters), a file that cannot be read. Zero adapters is the frozen backbone.
Not here: the single-adapter export (pipeline.py), routing at run time (crome_runtime.engine).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from crome_edge.errors import CromeError
from crome_export.bundle import bundle_lock
from crome_runtime import formats, input_files
from crome_runtime.adapter_entries import (MAX_RECORDED_QUESTIONS, REQUIRED_ROLES, ROLES, AdapterEntry, Route, check_adapters,
                                    check_name, file_name, overlaps)
from crome_runtime.adapter_versions import DEFAULT_KEPT_VERSIONS, check_keep
from crome_runtime.formats import DEFAULT_MAX_NEW_TOKENS
from crome_runtime.limits import listed
from crome_runtime.manifest import BundleError, FileEntry, Manifest, bundle_report, read_manifest, read_report
from crome_runtime.route_patterns import RouteError, compile_pattern


@dataclass
class Member:
    """One adapter of a bundle being written: its manifest entry, its files on disk (role -> path + entry) and its
    section of report.json; and its kept versions' (entry.versions, crome_runtime.adapter_versions): their files
    (bundle file name -> path + entry) and fidelity reports (version -> section)."""

    entry: AdapterEntry
    files: dict[str, tuple[Path, FileEntry]]
    report: dict | None
    kept: dict[str, tuple[Path, FileEntry]] = dataclasses.field(default_factory=dict)
    kept_reports: dict[str, dict | None] = dataclasses.field(default_factory=dict)


@dataclass
class Contents:
    """What a bundle directory holds, split into the backbone's files and its adapters."""

    path: Path
    manifest: Manifest
    shared: dict[str, tuple[Path, FileEntry]]  # bundle file name -> (path, entry), report.json excluded
    members: list[Member]
    report: dict | None


def adapter_name(adapter: Path) -> str:
    """The name an adapter file gets in a bundle: its file name without .safetensors (a directory, FIFO or device
    given as the adapter is refused as what it is, not for its name)."""
    if Path(adapter).exists() and not Path(adapter).is_file():
        kind = input_files.file_kind(Path(adapter).stat().st_mode)
        raise CromeError(f"adapter {adapter} is {kind}; give the adapter's .safetensors file (what `crome-edge train "
                         "--out` wrote)")
    return check_name(Path(adapter).name.removesuffix(".safetensors"), f"adapter {Path(adapter).name}")


def parse_routes(values: list[str] | None, option: str = "--route") -> dict[str, list[str]]:
    """["NAME=TEXT", ...] -> {NAME: [TEXT, ...]}; CromeError naming the bad value."""
    routes: dict[str, list[str]] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name or not text:
            raise CromeError(f"{option} {value!r:.80} must be NAME=TEXT (the adapter's name, then the question or "
                             "regular expression)")
        routes.setdefault(name, []).append(text)
    for name, patterns in routes.items():
        if option == "--route":
            for pattern in patterns:
                try:
                    compile_pattern(pattern)  # RE2 takes it, in bounded size: checked before any export work
                except RouteError as error:
                    raise CromeError(f"{option} {name}=...: {error}") from None
    return routes


def training_route(adapter: Path, data: Path | None = None, note=lambda message: None) -> Route:
    """The questions of the adapter's training data (train + validation split, and the questions it replayed),
    exactly: the prompts it was trained for, as training recorded them (`training.questions`), else read from the
    data (older adapters; or `data`, given when it moved). An adapter that records no training data gets no route
    (it answers only when asked by name)."""
    from crome_edge.adapter_file import read_metadata
    from crome_export.frames import _training_split
    from crome_export.pipeline import _jsonl_of

    meta = read_metadata(adapter)
    recorded = _strings(meta.training.get("questions"))
    if data is not None or recorded is None:
        if data is not None:
            meta = dataclasses.replace(meta, train_data=str(_jsonl_of(Path(data))))
        train, val, _ = _training_split(meta, note)
        recorded = [s.question for s in train + val]
    replayed = _strings((meta.training.get("replay") or {}).get("questions")) or []  # --replay: trained to keep these
    return Route(list(dict.fromkeys(recorded + replayed)))


def _strings(value) -> list[str] | None:
    """A metadata list of questions (at most MAX_RECORDED_QUESTIONS, what training writes), or None when it is not one
    (absent, or written by something else)."""
    if (isinstance(value, list) and 0 < len(value) <= MAX_RECORDED_QUESTIONS
            and all(isinstance(q, str) and q.strip() for q in value)):
        return value
    return None


def choose_route(name: str, trained, patterns: dict, questions: dict) -> Route:
    """--route / --route-question for `name` replace the training questions; trained() reads those only when
    neither is given (the training data need not be at hand when the route is)."""
    if name in patterns or name in questions:
        return Route(questions.get(name, []), patterns.get(name, []))
    return trained()


def read_contents(path: Path, trained_routes: bool = True, verify: bool = True) -> Contents:
    """A bundle's files (every sha256 checked, unless `verify` is False: a bundle this process has just written,
    hashing every file as it did) as backbone files + adapters. trained_routes: an adapter that answers every
    question (a version-1 bundle's) gets the routes of its training data instead (it answered every question alone;
    in a bundle of several it answers its own)."""
    path = Path(path).expanduser().absolute()
    manifest = read_manifest(path, verify=verify)
    report = _report(path, manifest)
    sections = (report or {}).get("adapters", {})
    kept_sections = (report or {}).get(formats.REPORT_KEPT_VERSIONS, {})
    members = []
    for entry in manifest.adapters:
        if trained_routes and entry.route.catch_all:
            entry = dataclasses.replace(entry, route=_trained_route(path, manifest, entry))
        files = {role: (path / name, manifest.files[name]) for role in ROLES
                 if (name := entry.file(role)) is not None and name in manifest.files}
        kept = {name: (path / name, manifest.files[name]) for version in entry.versions
                for name in version.files.values()}  # the manifest reader checked they are listed
        reports = kept_sections.get(entry.name) if isinstance(kept_sections, dict) else None
        reports = reports if isinstance(reports, dict) else {}
        members.append(Member(entry, files, sections.get(entry.name), kept,
                              {v.version: reports.get(v.version) for v in entry.versions}))
    owned = manifest.adapter_files() | {formats.REPORT_FILE}
    shared = {name: (path / name, e) for name, e in manifest.files.items() if name not in owned}
    return Contents(path, manifest, shared, members, report)


def _trained_route(path: Path, manifest: Manifest, entry: AdapterEntry) -> Route:
    """An adapter that answered every question joining a bundle of several: the questions of its training data,
    else (the data is gone and cannot be regenerated) the questions of its acceptance set, said on stderr."""
    weights, acceptance = entry.file("weights"), entry.file("acceptance")
    if weights is not None and weights in manifest.files:
        try:
            return training_route(path / weights)
        except CromeError as error:
            why = str(error)
    else:
        why = "the bundle has no copy of its weights"
    questions = []
    if acceptance is not None and acceptance in manifest.files:
        try:
            document = input_files.read_json(path / acceptance)
            questions = [str(p["question"]) for p in document["prompts"]]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise CromeError(f"{acceptance} in {path} cannot be read ({error}); re-export the bundle") from None
    say(f"note: adapter {entry.name}'s training questions are not at hand ({why}); it is routed the "
        f"{len(set(questions))} question(s) of its acceptance set (`bundle list` shows them)")
    return Route(questions)


def _report(path: Path, manifest: Manifest) -> dict | None:
    try:
        return read_report(path, manifest)
    except BundleError as error:
        raise CromeError(str(error)) from None


def check_compatible(base: Contents, other: Contents, what: str) -> list[str]:
    """`other` must be for `base`'s backbone at its precision (CromeError); -> the backbone files whose bytes differ
    from base's (the adapter was measured on other's: write_bundle then checks it on base's before committing)."""
    b, o = base.manifest, other.manifest
    if o.backbone.fingerprint != b.backbone.fingerprint:
        raise CromeError(f"{what} is for backbone {o.backbone.name} (fingerprint {o.backbone.fingerprint[:12]}…) but "
                         f"the bundle's backbone is {b.backbone.name} (fingerprint {b.backbone.fingerprint[:12]}…); "
                         f"an adapter joins a bundle only on the backbone it was trained for")
    if o.precision != b.precision:
        raise CromeError(f"{what} was exported at {o.precision}, the bundle is {b.precision}")
    missing = sorted(set(base.shared) ^ set(other.shared))
    if missing:
        raise CromeError(f"{what} came out with other backbone files than the bundle's (only one has "
                         f"{', '.join(missing)}); export it with the crome-edge version the bundle was made with")
    return sorted(name for name in base.shared if base.shared[name][1].sha256 != other.shared[name][1].sha256)


def check_adapter_backbone(adapter: Path, manifest: Manifest) -> None:
    """An adapter for another backbone is refused before any export work, with the fingerprint hint."""
    from crome_edge.adapter_file import read_metadata

    meta = read_metadata(adapter)  # AdapterFileError: not an adapter file, malformed metadata
    b = manifest.backbone
    if meta.backbone_fingerprint != b.fingerprint or meta.config.d_model != b.d_model:
        raise CromeError(
            f"adapter {adapter.name} was trained for backbone {meta.backbone_name} (d={meta.config.d_model}, "
            f"fingerprint {meta.backbone_fingerprint[:12]}…) but this bundle's backbone is {b.name} (d={b.d_model}, "
            f"fingerprint {b.fingerprint[:12]}…); train the adapter on {b.name}, or export it into a bundle of its own "
            f"backbone (`crome-edge export --adapter {adapter.name}`)")


def _check_members(members: list[Member]) -> None:
    try:
        check_adapters([m.entry for m in members], "the bundle")
    except BundleError as error:
        raise CromeError(str(error)) from None


def write_bundle(target: Path, base: Contents, members: list[Member], force: bool,
                 check: dict[str, list[str]] | None = None, threads: int | None = None) -> Path:
    """A version-2 bundle at `target`: base's backbone files + `members`, hard-linked where possible, committed by
    one atomic exchange. Loaded once (graph dims) before it replaces anything. check: adapter -> the backbone files
    it was exported with that differ in bytes from base's (e.g. another int8 calibration): that adapter's own
    acceptance set must pass on the staged bundle (crome_runtime.verify.verify_adapter) or nothing changes."""
    from crome_export.bundle import BundleWriter
    from crome_runtime.bundle import load_bundle

    _check_members(members)
    entries = [m.entry.renamed() for m in members]  # every adapter's files as NAME.<role>
    manifest = dataclasses.replace(
        base.manifest, adapters=entries, files={},
        generation=dataclasses.replace(base.manifest.generation,
                                       max_new_tokens=max([e.max_new_tokens for e in entries], default=DEFAULT_MAX_NEW_TOKENS)))
    sections: dict = {m.entry.name: m.report for m in members}
    kept_sections = {m.entry.name: {v.version: m.kept_reports.get(v.version) for v in m.entry.versions}
                     for m in members}
    report = bundle_report(manifest, sections, kept_sections)
    with BundleWriter(target, force) as writer:
        for name, (path, entry) in base.shared.items():
            writer.link_file(path, name, entry)
        for member in members:
            missing = [role for role in REQUIRED_ROLES if role not in member.files]
            if missing:
                raise CromeError(f"adapter {member.entry.name} lacks its {', '.join(missing)} file(s); re-export it")
            for role, (path, entry) in member.files.items():
                writer.link_file(path, file_name(member.entry.name, role), entry)
            for version in member.entry.versions:  # kept versions: hard links to the files they had
                for name in version.files.values():
                    source, entry = member.kept[name]
                    writer.link_file(source, name, entry)
        writer.add_bytes(formats.REPORT_FILE, json.dumps(report, indent=2, sort_keys=True).encode())
        candidate = writer.candidate(manifest)
        load_bundle(candidate, verify=True)  # the files as they will ship, every sha256
        for name, differ in (check or {}).items():
            if differ:
                _check_on_candidate(candidate, name, differ, threads, sections)
        if check and any(check.values()):  # the report gained the checks' results
            writer.add_bytes(formats.REPORT_FILE, json.dumps(report, indent=2, sort_keys=True).encode())
        return writer.commit(manifest)


def _check_on_candidate(candidate: Path, name: str, differ: list[str], threads: int | None, sections: dict) -> None:
    from crome_runtime.engine import EngineConfig
    from crome_runtime.verify import verify_adapter

    result = verify_adapter(candidate, name, EngineConfig(threads=threads or 0))
    failed = [gate for gate, value in result["gates"].items() if not value["ok"]]
    if failed:
        raise CromeError(f"adapter {name} was exported with other bytes of {', '.join(differ)} than the bundle's, and "
                         f"on the bundle's its acceptance set fails ({', '.join(failed)}); nothing was changed. For an "
                         "int8 bundle pass the --calib it was exported with")
    section = sections.get(name)
    if section is not None:
        section["checked_on_bundle_backbone"] = {"files_that_differed": differ, "gates": result["gates"]}


def _export_alone(config, adapter: Path, route: Route, directory: Path, quiet: bool) -> Contents:
    """The ordinary single-adapter export of `adapter`, routed `route`, into `directory` -> its contents."""
    from crome_export.pipeline import Progress, export_bundle

    out = directory / f"{adapter_name(adapter)}.bundle"
    export_bundle(dataclasses.replace(config, adapter=adapter, out=out, force=False, route=route),
                  Progress(7, enabled=not quiet))
    return read_contents(out, trained_routes=False, verify=False)  # its writer hashed every file a moment ago


def export_adapters(config, adapters: list[Path], routes: dict[str, list[str]] | None = None,
                    questions: dict[str, list[str]] | None = None, quiet: bool = False) -> Path:
    """`crome-edge export --adapter a --adapter b ...` (config: ExportConfig with out set) -> the bundle path."""
    routes, questions = routes or {}, questions or {}
    if config.out is None:
        raise CromeError("an export of several adapters needs --out (the bundle directory)")
    if config.data is not None and len(adapters) > 1:
        raise CromeError("--data names one adapter's training data; with several adapters each must find its own")
    names = [adapter_name(a) for a in adapters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CromeError(f"two adapters are named {', '.join(dupes)}; adapter names (file names without "
                         ".safetensors) must be unique in a bundle: rename one file")
    unknown = sorted((set(routes) | set(questions)) - set(names))
    if unknown:
        raise CromeError(f"--route names {', '.join(unknown)}, which is not one of the adapters ({', '.join(names)})")
    from crome_export.bundle import BundleWriter

    target = Path(config.out).expanduser().absolute()
    BundleWriter(target, config.force).check_target()
    planned = [AdapterEntry(name=n, sha256="", rank=1,
                            route=choose_route(n, lambda a=a: training_route(a, config.data), routes, questions))
               for n, a in zip(names, adapters)]  # overlaps refused before any export work
    _check_members([Member(e, {}, None) for e in planned])
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.members-", dir=target.parent) as work:
        parts = [_export_alone(config, a, e.route, Path(work), quiet) for a, e in zip(adapters, planned)]
        members, check = [], {}
        for contents, entry in zip(parts, planned):
            check[entry.name] = check_compatible(parts[0], contents, f"adapter {entry.name}")
            members.append(contents.members[0])
        return write_bundle(target, parts[0], members, config.force, check, config.threads)


def add_adapter(bundle: Path, adapter: Path, config, patterns: list[str] | None = None,
                questions: list[str] | None = None, replace: bool = False, quiet: bool = False,
                keep: int | None = None) -> tuple[Path, float]:
    """`crome-edge bundle add BUNDLE --adapter FILE`: exports and checks only that adapter, then swaps the bundle.
    -> (bundle, seconds). replace: an adapter of the same name is replaced instead of refused, and kept in the bundle
    as a previous version (the last `keep`, default adapter_versions.DEFAULT_KEPT_VERSIONS; crome_export.versions)."""
    if keep is not None and not replace:
        raise CromeError("--keep applies to --replace (how many replaced versions the bundle keeps); add --replace, "
                         "or leave --keep out")
    keep = check_keep(DEFAULT_KEPT_VERSIONS if keep is None else keep)  # refused before any export work
    with bundle_lock(bundle, "bundle add"):  # one writer: read, export, commit with no other change between
        return _add_adapter(bundle, adapter, config, patterns, questions, replace, quiet, keep)


def _add_adapter(bundle: Path, adapter: Path, config, patterns: list[str] | None, questions: list[str] | None,
                 replace: bool, quiet: bool, keep: int) -> tuple[Path, float]:
    from crome_export.versions import succeed

    started = time.perf_counter()
    current = read_contents(bundle)
    name = adapter_name(adapter)
    check_adapter_backbone(adapter, current.manifest)
    existing = [m for m in current.members if m.entry.name != name]
    if len(existing) < len(current.members) and not replace:
        raise CromeError(f"the bundle already has an adapter named {name}; `bundle remove` it first, pass --replace, "
                         "or rename the new file")
    route = choose_route(name, lambda: training_route(adapter, config.data), {name: patterns} if patterns else {},
                         {name: questions} if questions else {})
    problems = overlaps([m.entry for m in existing] + [AdapterEntry(name=name, sha256="", rank=1, route=route)])
    if problems:
        raise CromeError(f"adapter {name}'s routes overlap the bundle's: {listed(problems)}; nothing was "
                         "changed. Give it its own questions with --route REGEX / --route-question TEXT")
    config = dataclasses.replace(config, precision=current.manifest.precision, out=None)
    with tempfile.TemporaryDirectory(prefix=f".{current.path.name}.add-", dir=current.path.parent) as work:
        alone = _export_alone(config, adapter, route, Path(work), quiet)  # its fidelity gates: this adapter's check
        differ = check_compatible(current, alone, f"adapter {name}")
        new = alone.members[0]
        if len(existing) < len(current.members):  # replaced in its place (the first matching route answers)
            members = [succeed(m, new, keep) if m.entry.name == name else m for m in current.members]
        else:
            members = existing + [new]
        path = write_bundle(current.path, current, members, True, {name: differ}, config.threads)
    return path, time.perf_counter() - started


def remove_adapter(bundle: Path, name: str) -> Path:
    """`crome-edge bundle remove BUNDLE NAME`; removing the last adapter leaves the frozen backbone alone."""
    with bundle_lock(bundle, "bundle remove"):
        return _remove_adapter(bundle, name)


def _remove_adapter(bundle: Path, name: str) -> Path:
    current = read_contents(bundle)
    kept = [m for m in current.members if m.entry.name != name]
    if len(kept) == len(current.members):
        have = ", ".join(m.entry.name for m in current.members) or "none"
        raise CromeError(f"the bundle {current.path} has no adapter {name!r:.80} (it has: {have}); nothing was changed")
    return write_bundle(current.path, current, kept, force=True)


def describe(bundle: Path) -> list[dict]:
    """The adapters of a bundle, their routes and kept versions (for `bundle list`)."""
    manifest = read_manifest(Path(bundle).expanduser(), verify=False)
    return [{"name": e.name, "route": e.route.to_dict(), "max_new_tokens": e.max_new_tokens}
            | ({"kept_versions": [v.version for v in e.versions]} if e.versions else {}) for e in manifest.adapters]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
