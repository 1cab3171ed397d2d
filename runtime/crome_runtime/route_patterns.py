"""Route regular expressions (`export --route`, `bundle add --route`, a manifest's `patterns`): compiled once, matched
in linear time, and compared with each other in bounded time.

Matching: Google RE2 (the `google-re2` package, a required dependency of the runtime), whose automata match in
time linear in the question, whatever the pattern — Python's `re` backtracks, and `Does (\\w+\\s?)+ spec\\?` against
a long question froze `serve` (issue 21). RE2 has no backreferences and no lookaround: such a pattern is refused
when it is given (and when a manifest holding one is read), as is one over MAX_ROUTE_PATTERN_CHARS characters or
whose compiled program is over MAX_ROUTE_PROGRAM instructions (huge counted repeats).

Comparing (`covers`): whether every question pattern A matches is also matched by pattern B — identical and
equivalent patterns are the two-way case. Decided exactly on automata: both patterns are read into NFAs (Python's
own regex parser, the syntax the two engines share) over the characters that tell their character classes apart
(every literal and range end in the patterns, all of ASCII and a few non-ASCII samples), then the product of the
two subset automata is searched for a question that A matches and B does not. The search stops after
MAX_OVERLAP_STATES product states: then the answer is "undecided", and the caller refuses the pair rather than
guess. Anchors and word boundaries are read as matching the empty string (routes match the whole question).
Torch-free. Not here: which adapter a question goes to (adapter_entries.route).
"""
from __future__ import annotations

import functools
import re
from typing import Any

from crome_runtime.errors import CromeError
from crome_runtime.limits import MAX_OVERLAP_STATES, MAX_ROUTE_PATTERN_CHARS, MAX_ROUTE_PROGRAM

try:  # Python 3.11+: the parser under its own name; 3.10: sre_parse
    from re import _constants as _c, _parser as _p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]


class RouteError(CromeError, ValueError):
    """A route pattern that cannot be used (the message says why and what to write instead)."""


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program of a route pattern; RouteError for a pattern RE2 refuses, an over-long one, or one whose
    program is over MAX_ROUTE_PROGRAM. Cached: a pattern is compiled once per process."""
    try:
        import re2
    except ImportError:  # pragma: no cover - a declared dependency
        raise RouteError("route patterns need the google-re2 package (pip install google-re2)") from None
    if not isinstance(pattern, str) or not pattern:
        raise RouteError("a route pattern must be a non-empty string")
    if len(pattern) > MAX_ROUTE_PATTERN_CHARS:
        raise RouteError(f"route pattern {pattern!r:.60} is {len(pattern):,} characters, over the "
                         f"{MAX_ROUTE_PATTERN_CHARS:,}-character limit; list exact questions (--route-question) instead")
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True  # a route only asks "does it match": RE2 then runs its DFA (a ~300x faster
    # constant than the capturing NFA: 2.3 ms -> 8 µs for ((a*){2,5}){2,5} on 4,000 characters)
    try:
        program = re2.compile(pattern, options)
    except re2.error as error:
        why = error.args[0].decode("utf-8", "replace") if error.args and isinstance(error.args[0], bytes) else str(error)
        raise RouteError(f"route pattern {pattern!r:.80} is not a regular expression crome-edge can match in bounded "
                         f"time ({why}); backreferences (\\1) and lookarounds ((?=, (?!, (?<=) are not supported, "
                         "rewrite it without them") from None
    if program.programsize > MAX_ROUTE_PROGRAM:
        raise RouteError(f"route pattern {pattern!r:.60} compiles to {program.programsize:,} instructions, over the "
                         f"{MAX_ROUTE_PROGRAM:,} limit (large counted repeats like {{500}}); simplify it")
    return program


def fullmatch(pattern: str, text: str) -> bool:
    """Whether route `pattern` matches the whole of `text` (RE2: linear time)."""
    return compile_pattern(pattern).fullmatch(text) is not None


# --- comparing two patterns ------------------------------------------------------------------------------------------

class _Undecided(CromeError):
    """Internal to covers(): the patterns are beyond what the check reads or its size limit (never escapes)."""


_SAMPLES = [chr(c) for c in range(128)] + ["\x85", "\xa0", "\xe9", "\xc9", "\xdf", "\u0131", "\u017f", "\u0663",
                                           "\u2028", "\u212a", "\u4e2d", "\U0001f600"]
_CATEGORIES = {  # re's categories in a character class -> the Python pattern that tests one character
    _c.CATEGORY_DIGIT: r"\d", _c.CATEGORY_NOT_DIGIT: r"\D", _c.CATEGORY_SPACE: r"\s",
    _c.CATEGORY_NOT_SPACE: r"\S", _c.CATEGORY_WORD: r"\w", _c.CATEGORY_NOT_WORD: r"\W",
}


class _Nfa:
    """A Thompson NFA over character predicates: edges (predicate or None for the empty string, target)."""

    def __init__(self, tree, flags: int):
        self.edges: list[list[tuple[Any, int]]] = []
        self.chars: set[str] = set()
        self.start = self._state()
        self.accept = self._seq(tree, self.start, flags)

    def _state(self) -> int:
        if len(self.edges) >= MAX_ROUTE_PROGRAM * 4:
            raise _Undecided()
        self.edges.append([])
        return len(self.edges) - 1

    def _edge(self, a: int, predicate, b: int | None = None) -> int:
        b = self._state() if b is None else b
        self.edges[a].append((predicate, b))
        return b

    def _seq(self, items, at: int, flags: int) -> int:
        for op, av in items:
            at = self._item(op, av, at, flags)
        return at

    def _item(self, op, av, at: int, flags: int) -> int:
        if op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN):
            return self._edge(at, self._predicate(op, av, flags))
        if op is _c.SUBPATTERN:
            _group, add, remove, sub = av
            return self._seq(sub, at, (flags | add) & ~remove)
        if op is _c.BRANCH:
            end = self._state()
            for alternative in av[1]:
                start = self._edge(at, None)
                self._edge(self._seq(alternative, start, flags), None, end)
            return end
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, high, sub = av
            for _ in range(low):
                at = self._seq(sub, at, flags)
            if high is _c.MAXREPEAT:
                loop = self._edge(at, None)
                self._edge(self._seq(sub, loop, flags), None, loop)
                return loop
            end = self._state()
            for _ in range(high - low):
                self._edge(at, None, end)
                at = self._seq(sub, at, flags)
            self._edge(at, None, end)
            return end
        if op is _c.AT:  # ^ $ \A \Z \b \B: the empty string (routes match whole questions)
            return self._edge(at, None)
        raise _Undecided()  # backreferences, lookarounds: RE2 refused them already

    def _predicate(self, op, av, flags: int):
        ignore = bool(flags & re.IGNORECASE)
        dotall = bool(flags & re.DOTALL)
        if op is _c.ANY:
            return ("any", dotall)
        if op in (_c.LITERAL, _c.NOT_LITERAL):
            self.chars.update(_cases(chr(av)))
            return ("lit", op is _c.NOT_LITERAL, chr(av), ignore)
        items: list[tuple] = []
        negate = False
        for kind, value in av:
            if kind is _c.NEGATE:
                negate = True
            elif kind is _c.LITERAL:
                self.chars.update(_cases(chr(value)))
                items.append(("lit", chr(value)))
            elif kind is _c.RANGE:
                low, high = value
                for end in (low - 1, low, high, high + 1):
                    if 0 <= end <= 0x10FFFF:
                        self.chars.update(_cases(chr(end)))
                items.append(("range", low, high))
            elif kind is _c.CATEGORY and value in _CATEGORIES:
                items.append(("cat", _CATEGORIES[value]))
            else:
                raise _Undecided()
        return ("in", negate, tuple(items), ignore)


def _cases(char: str) -> set[str]:
    return {char, char.lower()[:1] or char, char.upper()[:1] or char}


def _test(predicate, char: str) -> bool:
    kind = predicate[0]
    if kind == "any":
        return predicate[1] or char != "\n"
    if kind == "lit":
        _, negated, literal, ignore = predicate
        hit = char == literal or (ignore and (char.lower() == literal.lower() or char.upper() == literal.upper()))
        return hit != negated
    _, negated, items, ignore = predicate
    variants = _cases(char) if ignore else {char}
    hit = False
    for item in items:
        if item[0] == "lit":
            hit = item[1] in variants
        elif item[0] == "range":
            hit = any(item[1] <= ord(v) <= item[2] for v in variants)
        else:
            hit = re.fullmatch(item[1], char) is not None
        if hit:
            break
    return hit != negated


def _parse(pattern: str) -> _Nfa:
    parsed = _p.parse(pattern)
    return _Nfa(list(parsed), parsed.state.flags)


@functools.lru_cache(maxsize=4096)
def covers(a: str, b: str) -> bool | None:
    """Whether every question pattern `a` matches is also matched by pattern `b` (True/False), or None when that was
    not decided within MAX_OVERLAP_STATES product states (or `a`/`b` use syntax this check does not read)."""
    try:
        nfa_a, nfa_b = _parse(a), _parse(b)
    except (_Undecided, re.error, RecursionError, OverflowError):
        return None
    samples = sorted(set(_SAMPLES) | nfa_a.chars | nfa_b.chars)
    predicates = {p for nfa in (nfa_a, nfa_b) for edges in nfa.edges for p, _ in edges if p is not None}
    # characters every predicate treats alike are one symbol: the search runs over classes, not characters
    classes: dict[tuple, list[str]] = {}
    for char in samples:
        classes.setdefault(tuple(_test(p, char) for p in sorted(predicates, key=repr)), []).append(char)
    symbols = [chars[0] for chars in classes.values()]
    tables = [_moves(nfa, symbols) for nfa in (nfa_a, nfa_b)]
    start = (_closure(nfa_a, {nfa_a.start}), _closure(nfa_b, {nfa_b.start}))
    seen = {start}
    frontier = [start]
    while frontier:
        states_a, states_b = frontier.pop()
        if nfa_a.accept in states_a and nfa_b.accept not in states_b:
            return False
        for symbol in range(len(symbols)):
            next_a = _step(nfa_a, tables[0], states_a, symbol)
            if not next_a:
                continue
            pair = (next_a, _step(nfa_b, tables[1], states_b, symbol))
            if pair not in seen:
                if len(seen) >= MAX_OVERLAP_STATES:
                    return None
                seen.add(pair)
                frontier.append(pair)
    return True


def _moves(nfa: _Nfa, symbols: list[str]) -> list[list[tuple[int, int]]]:
    """Per state: (symbol bitmask, target) of its character edges."""
    table = []
    for edges in nfa.edges:
        row = []
        for predicate, target in edges:
            if predicate is not None:
                mask = sum(1 << i for i, char in enumerate(symbols) if _test(predicate, char))
                row.append((mask, target))
        table.append(row)
    return table


def _closure(nfa: _Nfa, states: set[int]) -> frozenset[int]:
    stack, seen = list(states), set(states)
    while stack:
        for predicate, target in nfa.edges[stack.pop()]:
            if predicate is None and target not in seen:
                seen.add(target)
                stack.append(target)
    return frozenset(seen)


def _step(nfa: _Nfa, table, states: frozenset[int], symbol: int) -> frozenset[int]:
    bit = 1 << symbol
    return _closure(nfa, {target for state in states for mask, target in table[state] if mask & bit})


__all__ = ["RouteError", "compile_pattern", "covers", "fullmatch"]
