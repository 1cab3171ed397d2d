"""The adapters of a bundle: the manifest's `adapters` list, their file names and their prompt routes.

A bundle (docs/architecture.md §4) holds the backbone parts once and N >= 0 adapters beside them; adapter
NAME's files are the role's plain name prefixed with `NAME.` (plain names, no subdirectories):
`NAME.adapter_visual.onnx`, `NAME.adapter_text.onnx`, `NAME.adapter.safetensors`, `NAME.acceptance.json`,
`NAME.acceptance.npz`. Each adapter carries its routes: the exact questions it was trained for and/or
regular expressions (full match, by RE2 in linear time: route_patterns.py, which also decides overlaps). A question goes to the one adapter whose route matches it, otherwise to
the frozen backbone with no adapter (`none`). This is the one adapter model: the manifest reader
(manifest.py) reads a version-1 manifest (one adapter under the unprefixed names) into it as one entry whose
files are those names and whose route is the catch-all (it answers every question, as it always did).
Torch-free. Not here: running adapters (adapter_set.py, adapter_kernel.py), building a bundle (crome_export.multi).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crome_runtime import formats, route_patterns
from crome_runtime.confidence import MAX_ANSWER_SET
from crome_runtime.limits import MAX_ADAPTER_NEW_TOKENS, MAX_TEXT_CHARS, listed
from crome_runtime.manifest import BundleError

if TYPE_CHECKING:  # adapter_versions.py builds on this module: imported where used
    from crome_runtime.adapter_versions import KeptVersion

NONE = "none"  # the frozen backbone, no adapter: the name a caller gives to skip every adapter
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ROLES = {  # role -> the role's plain file name (adapter NAME's file is NAME.<this>)
    "adapter_visual": formats.ADAPTER_VISUAL_ONNX,
    "adapter_text": formats.ADAPTER_TEXT_ONNX,
    "weights": formats.ADAPTER_WEIGHTS_FILE,
    "acceptance": formats.ACCEPTANCE_FILE,
    "acceptance_arrays": formats.ACCEPTANCE_ARRAYS,
}
REQUIRED_ROLES = ("adapter_visual", "adapter_text", "weights")
GRAPH_ROLES = ("adapter_visual", "adapter_text")
# The route of an adapter that answers every question (a version-1 bundle's adapter, read by manifest.py)
CATCH_ALL = r"(?s).*"
# Training records the distinct questions of its data up to this many (its route); a set of more distinct questions
# (free-form prompts) records none, and export reads them from the data or takes --route.
MAX_RECORDED_QUESTIONS = 256


def check_name(name, source: str = "adapter") -> str:
    """An adapter name: letters, digits, `_`, `-` (1..64, no dot: it prefixes file names), not `none`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.lower() == NONE:
        raise BundleError(f"{source} name {name!r:.80} is not usable: an adapter name is 1-64 letters, digits, '_' or "
                          f"'-', starting with a letter or digit, and not {NONE!r} (that name means no adapter). "
                          "Rename the adapter file (its name is the file name without .safetensors)")
    return name


def file_name(adapter: str, role: str) -> str:
    """The bundle file of adapter `adapter`'s `role`, as every bundle writer names it: NAME.<the role's plain name>."""
    return f"{adapter}.{ROLES[role]}"


@dataclass
class Route:
    """The questions an adapter answers: exact strings (compared after stripping outer whitespace) and regular
    expressions matched against the whole stripped question."""

    questions: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not all(isinstance(q, str) and q.strip() for q in self.questions):
            raise BundleError("an adapter route's questions must be non-empty strings")
        if not all(isinstance(p, str) and p for p in self.patterns):
            raise BundleError("an adapter route's patterns must be non-empty strings")
        self.questions = sorted({q.strip() for q in self.questions})
        self._exact = frozenset(self.questions)
        self._compiled = []
        for pattern in self.patterns:
            try:
                self._compiled.append(route_patterns.compile_pattern(pattern))  # RE2: linear-time matching
            except route_patterns.RouteError as error:
                raise BundleError(str(error)) from None

    @classmethod
    def everything(cls) -> "Route":
        """The catch-all route: every question (a version-1 bundle's one adapter)."""
        return cls([], [CATCH_ALL])

    @property
    def catch_all(self) -> bool:
        return self.patterns == [CATCH_ALL] and not self.questions

    @property
    def empty(self) -> bool:
        return not self.questions and not self.patterns

    def matches(self, question: str) -> bool:
        text = question.strip()
        if text in self._exact:
            return True
        # a question over the text limit was refused before it got here; the cap keeps matching bounded regardless
        return len(text) <= MAX_TEXT_CHARS and any(p.fullmatch(text) is not None for p in self._compiled)

    def to_dict(self) -> dict:
        return {"questions": list(self.questions), "patterns": list(self.patterns)}


@dataclass
class AdapterEntry:
    """One adapter of a bundle (the manifest's `adapters`): identity, routes, generation cap, and its files."""

    name: str
    sha256: str  # of the adapter .safetensors it was exported from
    rank: int
    route: Route
    max_new_tokens: int = formats.DEFAULT_MAX_NEW_TOKENS  # the generation cap its export measured (longest answer + 2)
    training: dict = field(default_factory=dict)
    # its closed answer set (confidence.answer_set: the distinct training answers, at most confidence.MAX_ANSWER_SET),
    # whose probabilities each answer reports; empty: open-set (or exported before answer sets were recorded)
    answers: list[str] = field(default_factory=list)
    # role -> bundle file name; None: file_name()'s NAME.<role> for every role. Only the manifest reader gives
    # other names (a version-1 bundle's unprefixed ones, where the weights file may be absent) and kept versions
    files: dict[str, str] | None = None
    added: str | None = None  # when it entered the bundle (UTC, ISO 8601); None in bundles written before history
    versions: list[KeptVersion] = field(default_factory=list)  # its replaced versions kept in the bundle, newest first

    def __post_init__(self) -> None:
        if self.files is None:
            check_name(self.name)
            self.files = {role: file_name(self.name, role) for role in ROLES}
        elif not isinstance(self.name, str) or not self.name.strip() or not self.name.isprintable():
            raise BundleError(f"adapter name {self.name!r:.80} is not usable: it must be a non-empty string of "
                              "printable characters (no line breaks or control characters)")

    def file(self, role: str) -> str | None:
        """The bundle file of `role` (ROLES), or None when this adapter has none (a version-1 bundle without the
        adapter's weights)."""
        assert self.files is not None
        return self.files.get(role)

    @property
    def canonical(self) -> bool:
        """Its files have the names every writer gives them (NAME.<role>)."""
        return self.files == {role: file_name(self.name, role) for role in ROLES}

    def owned_files(self) -> list[str]:
        """Its bundle files and those of its kept versions."""
        return [*(self.files or {}).values(), *(name for kept in self.versions for name in kept.files.values())]

    def renamed(self) -> "AdapterEntry":
        """The same adapter under the names a bundle writer gives its files (check_name: the name prefixes them)."""
        return dataclasses.replace(self, name=check_name(self.name), files=None)

    def to_dict(self) -> dict:
        data = {"name": self.name, "sha256": self.sha256, "rank": self.rank, "route": self.route.to_dict(),
                "max_new_tokens": self.max_new_tokens, "training": self.training}
        if self.answers:  # written only where known: older readers ignore it, older manifests read as open-set
            data["answers"] = list(self.answers)
        if not self.canonical:  # a manifest read from version 1 and written back unchanged, and kept versions
            data["files"] = dict(self.files or {})
        if self.added is not None:  # optional keys: a bundle without history reads and writes as before
            data["added"] = self.added
        if self.versions:
            data["versions"] = [kept.to_dict() for kept in self.versions]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest.json") -> "AdapterEntry":
        if not isinstance(data, dict):
            raise BundleError(f"{source}: every entry of `adapters` must be an object; re-export the bundle")
        try:
            route = data["route"]
            if not isinstance(route, dict) or set(route) - {"questions", "patterns"}:
                raise ValueError("route must be {\"questions\": [...], \"patterns\": [...]}")
            files = data.get("files")
            if files is not None and (not isinstance(files, dict) or set(files) - set(ROLES)
                                      or not set(GRAPH_ROLES) <= set(files)):
                raise ValueError(f"files must map roles ({', '.join(ROLES)}) to bundle file names")
            entry = cls(name=data["name"], sha256=data["sha256"], rank=data["rank"],
                        route=Route(list(route.get("questions", [])), list(route.get("patterns", []))),
                        max_new_tokens=data.get("max_new_tokens", formats.DEFAULT_MAX_NEW_TOKENS), training=data.get("training", {}),
                        answers=_answers(data.get("answers", [])), files=dict(files) if files is not None else None,
                        added=data.get("added"))
        except KeyError as error:
            raise BundleError(f"{source}: an adapter entry lacks {error}; re-export the bundle") from None
        except (TypeError, ValueError) as error:
            raise BundleError(f"{source}: adapter entry {data.get('name')!r:.40}: {error}; re-export the bundle") from None
        if not isinstance(entry.sha256, str) or not _whole(entry.rank) or not isinstance(entry.training, dict):
            raise BundleError(f"{source}: adapter entry {entry.name!r} has malformed fields (sha256, rank or training); "
                              "re-export the bundle")
        if not _whole(entry.max_new_tokens) or not 1 <= entry.max_new_tokens <= MAX_ADAPTER_NEW_TOKENS:
            raise BundleError(f"{source}: adapter {entry.name!r}: max_new_tokens is {entry.max_new_tokens!r:.40}, it must "
                              f"be a whole number from 1 to {MAX_ADAPTER_NEW_TOKENS}; fix the manifest or re-export the bundle")
        if entry.added is not None and not isinstance(entry.added, str):
            raise BundleError(f"{source}: adapter {entry.name!r}: `added` must be a date string; fix the manifest")
        from crome_runtime.adapter_versions import read_versions  # it builds on this module

        entry.versions = read_versions(data.get("versions"), entry.name, entry.sha256, source)
        return entry


def _answers(value) -> list[str]:
    """An entry's `answers`: a list of at most MAX_ANSWER_SET distinct non-empty strings (ValueError otherwise)."""
    if not isinstance(value, list) or len(value) > MAX_ANSWER_SET or len(set(map(str, value))) != len(value) or not all(
            isinstance(a, str) and a.strip() and len(a) <= MAX_TEXT_CHARS for a in value):
        raise ValueError(f"answers must be a list of at most {MAX_ANSWER_SET} distinct non-empty strings "
                         "(the adapter's closed answer set)")
    return list(value)


def _whole(value) -> bool:
    """An int that is not a bool (JSON `true` reads as True, an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def overlaps(entries: list[AdapterEntry]) -> list[str]:
    """Routes of different adapters that claim one question, as sentences: an exact question of one adapter that
    another adapter's route also matches; one regular expression given to two adapters, or two that match the same
    questions, or one that covers another (route_patterns.covers, bounded); a catch-all route beside any other
    adapter's route. (Two expressions that merely intersect, each also matching questions of its own, are allowed:
    a question both match goes to the first adapter.)"""
    claims: dict[str, list[str]] = {}  # question -> every adapter whose route matches it
    for a in entries:
        for question in a.route.questions:
            claims.setdefault(question, [b.name for b in entries if b.route.matches(question)])
    problems = [f"{question!r:.80} is routed to {' and to '.join(names)}"
                for question, names in sorted(claims.items()) if len(names) > 1]
    patterns: dict[str, list[str]] = {}  # regular expression -> every adapter whose route has it
    for a in entries:
        for pattern in dict.fromkeys(a.route.patterns):
            patterns.setdefault(pattern, []).append(a.name)
    problems += [f"the regular expression {pattern!r:.80} is the route of {' and of '.join(names)}"
                 for pattern, names in sorted(patterns.items()) if len(names) > 1]
    problems += _covered(entries)
    for a in entries:
        others = [b.name for b in entries if b is not a and not b.route.empty and not b.route.catch_all]
        if a.route.catch_all and others:
            problems.append(f"{a.name} answers every question, so {' and '.join(others)} would never be reached")
    return problems


def _covered(entries: list[AdapterEntry]) -> list[str]:
    """Different regular expressions of two adapters where one matches every question the other does (equivalent
    ones included): the covered adapter would never be reached for them. Decided on automata in bounded time
    (route_patterns.covers); a pair it cannot decide within its limit is reported too, to be simplified."""
    problems = []
    ordinary = [e for e in entries if not e.route.catch_all]  # a catch-all route has its own sentence
    for i, a in enumerate(ordinary):
        for b in ordinary[i + 1:]:
            for pa in dict.fromkeys(a.route.patterns):
                for pb in dict.fromkeys(b.route.patterns):
                    if pa == pb:
                        continue  # said above: one regular expression given to two adapters
                    forward, backward = route_patterns.covers(pa, pb), route_patterns.covers(pb, pa)
                    if forward and backward:
                        problems.append(f"the regular expressions {pa!r:.60} of {a.name} and {pb!r:.60} of {b.name} "
                                        "match the same questions")
                    elif forward or backward:
                        (small, x), (big, y) = ((pa, a.name), (pb, b.name)) if forward else ((pb, b.name), (pa, a.name))
                        problems.append(f"every question {small!r:.60} ({x}) matches is also matched by {big!r:.60} "
                                        f"({y})")
                    elif forward is None or backward is None:
                        problems.append(f"whether {pa!r:.60} ({a.name}) and {pb!r:.60} ({b.name}) claim the same "
                                        "questions cannot be decided within the overlap check's limit; simplify one")
    return problems


def check_adapters(entries: list[AdapterEntry], source: str = "manifest.json") -> None:
    """BundleError for two adapters with one name or overlapping routes, saying which."""
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise BundleError(f"{source}: two adapters are named {entry.name!r}; adapter names must be unique "
                              "(rename one adapter file)")
        seen.add(entry.name)
    problems = overlaps(entries)
    if problems:
        raise BundleError(f"{source}: adapter routes overlap: {listed(problems)}. Give each adapter its own "
                          "questions (`--route NAME=REGEX` at export)")


def route(entries: list[AdapterEntry], question: str) -> str | None:
    """The adapter that answers `question` (the first whose route matches; check_adapters refused overlaps of
    known questions), or None: the frozen backbone."""
    for entry in entries:
        if entry.route.matches(question):
            return entry.name
    return None
