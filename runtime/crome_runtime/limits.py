"""The limits on what crome-edge accepts from a user, and the checks that apply them, defined once.

Every command, file loader and the server refuse input over these with a message that names the limit, so
memory stays bounded whatever a file or a request holds: a question or answer text (MAX_TEXT_CHARS, valid
UTF-8), a JSONL dataset line (MAX_LINE_BYTES), an image's pixels (MAX_IMAGE_PIXELS, set in crome_runtime
before OpenCV loads) and its longest side (MAX_IMAGE_SIDE, what the C core's preprocessing addresses), and
the decoder's context (`context_problem`: visual queries + prompt + at least one answer token). A server may
set lower limits of its own. A second block bounds the files, routes and bundles a user hands over (JSON size and
nesting, key files, route patterns and their overlap check, manifest fields, bundle writers); docs/security.md's
table of limits is generated from this file (tests/test_security_doc.py). Every constant carries a comment saying
what it bounds. Torch-free. Not here: the synthetic generator's limits (crome_edge.synth).
"""
from __future__ import annotations

from crome_runtime import MAX_IMAGE_PIXELS
from crome_runtime.errors import CromeError

MAX_IMAGE_SIDE = 32768  # pixels on either side: runtime/csrc/preprocess.c's MAX_SIDE, for `ask` and `run` alike
MAX_TEXT_CHARS = 4000  # a question (CLI, dataset line, request) or a training answer
MAX_LINE_BYTES = 1 << 20  # one line of a JSONL dataset

# --- Files, routes and bundles a user hands over (issue 21, reliability round 2). A block of its own: the server's
# request limits live in serve/config.py and their own block. docs/security.md's table is generated from this file.
MAX_JSON_BYTES = 64 << 20  # one JSON file (manifest, report, acceptance set, dataset info, config): a manifest is KBs
MAX_JSON_DEPTH = 64  # nesting of objects/arrays in any JSON the project reads (ours nest < 10; Python's parser recurses)
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20  # a .safetensors header (an adapter's is a few KB; larger is another format)
MAX_KEY_FILE_BYTES = 4096  # `serve --api-key-file`: an API key is one short line
MAX_ROUTE_PATTERN_CHARS = 1000  # one route regular expression (export --route, bundle add --route, a manifest)
MAX_ROUTE_PROGRAM = 2000  # RE2's program size for one route pattern: bigger means huge counted repeats ({1000}{1000})
MAX_OVERLAP_STATES = 20000  # automaton states the route-overlap check explores for two patterns before refusing
MAX_ADAPTER_NEW_TOKENS = 4096  # an adapter entry's generation cap in a manifest (the decoder's context bounds it again)
MAX_KEPT_VERSIONS = 20  # replaced versions of one adapter a bundle keeps (`bundle add --keep`, a manifest's `versions`)
MAX_LISTED_PROBLEMS = 5  # an error lists this many problems, then "... and N more" (one readable line)
BUNDLE_LOCK_WAIT_S = 10.0  # a second writer of one bundle waits this long for the first, then is refused

__all__ = ["MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "MAX_LINE_BYTES", "MAX_TEXT_CHARS", "TextError", "check_text",
           "context_problem", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_SAFETENSORS_HEADER_BYTES", "MAX_KEY_FILE_BYTES",
           "MAX_ROUTE_PATTERN_CHARS", "MAX_ROUTE_PROGRAM", "MAX_OVERLAP_STATES", "MAX_ADAPTER_NEW_TOKENS", "MAX_KEPT_VERSIONS",
           "MAX_LISTED_PROBLEMS", "BUNDLE_LOCK_WAIT_S", "listed"]


class TextError(CromeError, ValueError):
    """A question or answer that cannot be used as given; the message says what to change."""

    http_status = 400


def check_text(text, what: str = "the question") -> str:
    """`text` itself when it is a usable question/answer: a non-empty string of valid UTF-8 (no lone surrogates,
    as a non-UTF-8 command-line argument or a JSON "\\ud800" gives) of at most MAX_TEXT_CHARS characters."""
    if not isinstance(text, str):
        raise TextError(f"{what} must be text, not {type(text).__name__}")
    if not text.strip():
        raise TextError(f"{what} is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TextError(f"{what} is {len(text):,} characters, over the {MAX_TEXT_CHARS:,}-character limit; shorten it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TextError(f"{what} is not valid UTF-8 text (character {error.start} cannot be encoded); "
                        "pass it as UTF-8") from None
    return text


def context_problem(prompt_tokens: int, template_tokens: int, num_queries: int, context: int,
                    answer_tokens: int = 1) -> str | None:
    """Why a prompt does not fit the decoder's context (None when it fits).

    prompt_tokens: the whole text prompt (template + question); template_tokens: the template alone (with an
    empty question), so the message can say how long the *question* may be; answer_tokens: the room needed
    after the prompt (1 to generate anything; a training answer's length when teacher-forcing it)."""
    if num_queries + prompt_tokens + answer_tokens <= context:
        return None
    room = context - num_queries - template_tokens - answer_tokens
    question_tokens = max(prompt_tokens - template_tokens, 0)
    needs = "an answer" if answer_tokens == 1 else f"the {answer_tokens}-token answer"
    if room < 1:
        return (f"the decoder's context of {context} positions holds the {num_queries} visual queries and the "
                f"prompt template's {template_tokens} tokens but leaves no room for a question and {needs}")
    return (f"the question is {question_tokens} tokens; the decoder's context of {context} positions, less the "
            f"{num_queries} visual queries, the prompt template's {template_tokens} tokens and {needs}, leaves room "
            f"for {room}. Shorten the question to at most {room} tokens")


def listed(problems: list[str], separator: str = "; ") -> str:
    """At most MAX_LISTED_PROBLEMS of `problems` joined, then "... and N more": an error stays one readable line
    whatever a file holds (a 10,000-tensor adapter is not a 90 KB message)."""
    shown = separator.join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return f"{shown} … and {more} more" if more > 0 else shown


# --- serve: requests, connections and camera frames (crome_runtime.serve) ---------------------------
MAX_SEED = (1 << 64) - 1  # a request's sampling seed: 0 .. 2^64-1 (a negative seed is a 400, not a traceback)
MAX_CONNECTIONS = 1024  # open HTTP connections; at the cap a new one evicts the oldest idle or half-sent one
ACCEPT_BACKLOG = 64  # connections asyncio accepts in one loop turn (each an open file before it is capped)
LISTEN_BACKLOG = 4096  # connections the kernel queues for accept (no file of ours; Linux caps it at somaxconn)
FD_RESERVE = 256  # file descriptors kept free of connections (two accept batches + the process's own files)
REQUEST_READ_TIMEOUT_S = 10.0  # a request's head and body must arrive within this, else 408 / the connection closes
KEEP_ALIVE_TIMEOUT_S = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
MAX_HEADER_BYTES = 16 << 10  # a request's head (request line + headers); more is refused (h11's incomplete event)
MAX_CAMERA_FRAME_PIXELS = 3840 * 2160  # a camera frame over this (4K UHD) is resized to fit, said once
MAX_CAMERA_DECLARED_PIXELS = MAX_IMAGE_PIXELS  # a camera that declares larger frames is refused when opened
__all__ += ["ACCEPT_BACKLOG", "FD_RESERVE", "KEEP_ALIVE_TIMEOUT_S", "LISTEN_BACKLOG", "MAX_CAMERA_DECLARED_PIXELS",
            "MAX_CAMERA_FRAME_PIXELS", "MAX_CONNECTIONS", "MAX_HEADER_BYTES", "MAX_SEED", "REQUEST_READ_TIMEOUT_S"]
