"""Streaming detokenisation: whole characters only, multi-byte UTF-8 split across tokens, exact joins."""
import numpy as np
import pytest

from crome_runtime.detokenize import REPLACEMENT, StreamDetokenizer


@pytest.fixture(scope="module")
def byte_tokenizer():
    """One token per byte (the tiny backbone's), so every multi-byte character spans several tokens."""
    from crome_edge.backbones.tiny import byte_level_tokenizer

    return byte_level_tokenizer()


def _stream(tokenizer, ids):
    detokenizer = StreamDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids]
    return pieces, detokenizer.finish()


def test_multibyte_characters_come_out_whole(byte_tokenizer):
    text = "héllo €5 😀 ok"
    ids = byte_tokenizer.encode(text).ids
    assert len(ids) == len(text.encode())  # one token per byte
    pieces, tail = _stream(byte_tokenizer, ids)
    assert "".join(pieces) + tail == text and tail == ""
    assert not any(REPLACEMENT in p for p in pieces)
    euro = text.encode().index("€".encode())
    assert pieces[euro : euro + 3] == ["", "", "€"]  # held back until its third byte arrives
    emoji = text.encode().index("😀".encode())
    assert pieces[emoji : emoji + 4] == ["", "", "", "😀"]


def test_pieces_always_join_to_the_full_decode(byte_tokenizer):
    rng = np.random.default_rng(0)
    for _ in range(50):  # random bytes: invalid sequences, truncated characters, special tokens
        ids = rng.integers(0, byte_tokenizer.get_vocab_size(), rng.integers(1, 30)).tolist()
        pieces, tail = _stream(byte_tokenizer, ids)
        assert "".join(pieces) + tail == byte_tokenizer.decode(ids, skip_special_tokens=True)


def test_a_truncated_character_is_flushed_at_the_end(byte_tokenizer):
    ids = byte_tokenizer.encode("a€").ids[:-1]  # "a" + two of the euro sign's three bytes
    pieces, tail = _stream(byte_tokenizer, ids)
    assert pieces == ["a", "", ""] and tail and set(tail) == {REPLACEMENT}


def test_special_tokens_are_skipped(byte_tokenizer):
    ids = [0] + byte_tokenizer.encode("ok").ids + [2]
    pieces, tail = _stream(byte_tokenizer, ids)
    assert "".join(pieces) + tail == "ok"
