"""Route regular expressions cannot freeze anything (issue 21 row 1) and overlapping ones are refused (row 12's class).

Matching is RE2's (crome_runtime.route_patterns): linear in the question whatever the pattern, so the issue's
catastrophic-backtracking routes answer in well under 10 ms on a 4,000-character question; RE2's refusals
(backreferences, lookarounds) and the size limits are said at `--route` parsing and at manifest reading; the overlap
check decides identical, equivalent and covering expressions on automata within MAX_OVERLAP_STATES. The Hypothesis
fuzz builds patterns with nested quantifiers; CI runs the derandomized `crome-ci` profile, a longer search:

    HYPOTHESIS_PROFILE=crome-long python -m pytest -q tests/test_routes_bounded.py -p no:cacheprovider
"""
from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crome_runtime.adapter_entries import AdapterEntry, Route, check_adapters, overlaps, route
from crome_runtime.errors import CromeError
from crome_runtime.limits import MAX_ROUTE_PATTERN_CHARS, MAX_TEXT_CHARS
from crome_runtime.manifest import BundleError
from crome_runtime.route_patterns import RouteError, compile_pattern, covers


REDOS = [r"Does (\w+\s?)+ spec\?", r"(x+x+)+y", r"(.|.)*Z", r"(a|aa)+$", r"(\d+)*\d+!"]
MATCH_BUDGET_S = 0.010  # the bound: a ReDoS route costs <= 10 ms per match


def _entry(name: str, patterns=(), questions=()) -> AdapterEntry:
    return AdapterEntry(name=name, sha256="0" * 64, rank=1, route=Route(list(questions), list(patterns)))


def _match_seconds(r: Route, question: str) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: a shared CI core must not fail a linear-time match
        started = time.perf_counter()
        r.matches(question)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("pattern", REDOS)
def test_catastrophic_backtracking_routes_match_in_linear_time(pattern):
    r = Route([], [pattern])
    for question in ("Does " + "word " * 790 + "x", "x" * (MAX_TEXT_CHARS - 1), "a" * (MAX_TEXT_CHARS - 1) + "b",
                     "1" * (MAX_TEXT_CHARS - 1)):
        assert _match_seconds(r, question) < MATCH_BUDGET_S, (pattern, question[:20])
    entries = [_entry("a", [pattern]), _entry("b", questions=["What colour is it?"])]
    assert route(entries, "x" * MAX_TEXT_CHARS * 10) is None  # over the text limit: no regex is even run


@pytest.mark.parametrize("pattern, why", [(r"(a)\1", "backreferences"), (r"(?=a)a", "lookarounds"),
                                          (r"(?<!a)b", "lookarounds"), ("(", "missing"),
                                          ("a" * (MAX_ROUTE_PATTERN_CHARS + 1), "character limit"),
                                          (r"((a{100}){10}){3}", "instructions|repetition")])
def test_unboundable_patterns_are_refused_where_they_are_given(pattern, why):
    from crome_export.multi import parse_routes

    with pytest.raises(RouteError, match=why):
        compile_pattern(pattern)
    with pytest.raises(CromeError, match=f"--route colour=...: .*({why})") as caught:  # export / bundle add
        parse_routes([f"colour={pattern}"])
    assert "\n" not in str(caught.value)
    with pytest.raises(BundleError, match=why):  # a manifest that holds one
        Route([], [pattern])


@pytest.mark.parametrize("a, b, said", [
    (r"What colou?r is it\?", r"What colou?r is it\?", "is the route of x and of y"),  # identical (row 12)
    (r"What colou?r is it\?", r"What (colour|color) is it\?", "match the same questions"),  # equivalent
    (r"Is it (red|blue)\?", r"Is it \w+\?", r"every question .* \(x\) matches is also matched by .* \(y\)"),
    (r"(?i)is it red\?", r"Is it red\?", "is also matched by"),  # the case-insensitive one covers
    (r"Does (\w+\s?)+ spec\?", r"Does [\w\s]+ spec\?", "is also matched by"),  # the ReDoS form, decided fast
])
def test_overlap_check_catches_identical_equivalent_and_covered_regexes(a, b, said):
    started = time.perf_counter()
    problems = overlaps([_entry("x", [a]), _entry("y", [b])])
    assert time.perf_counter() - started < 2.0
    assert any(__import__("re").search(said, p) for p in problems), problems
    with pytest.raises(BundleError, match="routes overlap"):
        check_adapters([_entry("x", [a]), _entry("y", [b])])


@pytest.mark.parametrize("a, b", [(r".*defect.*", r".*bin.*"), (r"What colour is it\?", r"Is it warm\?"),
                                  (r"Does (\w+\s?)+ spec\?", r"Does .* spec\?")])  # \s has \n, . does not
def test_regexes_that_each_match_questions_of_their_own_are_accepted(a, b):
    assert overlaps([_entry("x", [a]), _entry("y", [b])]) == []


# --- fuzz: nested quantifiers -------------------------------------------------------------------------------------

ATOMS = st.sampled_from(["a", "x", ".", r"\w", r"\s", r"\d", "[ab]", "[^z]", " ", "(a|aa)", "(.|.)"])
QUANTIFIERS = st.sampled_from(["", "*", "+", "?", "{2,5}", "*?", "+?"])


def _nest(inner):
    return st.tuples(st.lists(inner, min_size=1, max_size=3), QUANTIFIERS, st.booleans()).map(
        lambda t: "(" + ("|" if t[2] else "").join(t[0]) + ")" + (t[1] or "+"))


PATTERNS = st.recursive(st.tuples(ATOMS, QUANTIFIERS).map("".join), _nest, max_leaves=8).map(lambda p: p + "!?")


@given(PATTERNS, st.sampled_from(["a", "x", "ab", "1 ", "word "]))
def test_fuzz_nested_quantifiers_match_in_bounded_time_or_are_refused(pattern, unit):
    try:
        r = Route([], [pattern])
    except BundleError as error:  # refused at add time: one line that says why
        assert "\n" not in str(error)
        return
    question = (unit * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS - 1] + "#"
    assert _match_seconds(r, question) < MATCH_BUDGET_S, pattern


@given(PATTERNS, PATTERNS)
def test_fuzz_overlap_check_decides_in_bounded_time(a, b):
    started = time.perf_counter()
    try:
        forward = covers(a, b)
        itself = covers(a, a)
    except RecursionError:  # pragma: no cover - the property: never
        pytest.fail(f"covers({a!r}, {b!r}) recursed without bound")
    assert time.perf_counter() - started < 5.0, (a, b)
    assert itself in (True, None)  # a pattern always covers itself: never "False"
    assert forward in (True, False, None)
