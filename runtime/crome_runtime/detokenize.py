"""Streaming detokenisation: token ids in, text pieces out, as soon as they are whole characters.

A byte-level tokenizer can split one character over several tokens ("é" is two UTF-8 bytes, an emoji four):
decoding such a token alone gives U+FFFD. The detokenizer decodes a short window of recent ids and emits
only the text the new token completes: a window whose decode ends in U+FFFD is held back until the next
token finishes the character (the incremental scheme of Hugging Face TGI and vLLM). Decoding a window, not
the whole answer, keeps each step O(1). `finish()` emits whatever is left (a genuinely invalid byte
sequence comes out as U+FFFD then), so the pieces always join to `tokenizer.decode(ids)`.
Torch-free (a `tokenizers.Tokenizer`). Not here: stop tokens (the engine never pushes them).
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"


class StreamDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = 0  # characters emitted so far
        self._prefix = 0  # window start: ids before it are settled
        self._read = 0  # ids up to here have had their text emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text it completes ("" while a character is still partial)."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT) and after.startswith(before):
            piece = after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
            self.emitted += len(piece)
            return piece
        return ""

    def finish(self) -> str:
        """The text not emitted yet (after the last token): held-back partial characters, as U+FFFD."""
        full = self._decode(self.ids)
        piece = full[self.emitted :]
        self.emitted = len(full)
        self._prefix = self._read = len(self.ids)
        return piece
