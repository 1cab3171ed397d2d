"""Prompt template: how a question becomes the LLM's text prompt, and where an answer ends.

Torch-free: the trainer, the exporter (manifest) and the runtime share this one definition.
The visual query tokens always come first; the template's text follows them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PromptTemplate:
    text: str = "{question}"  # the text prompt; "{question}" is replaced by the user's question
    answer_suffix: str = ""  # appended to every answer in training, e.g. "<|im_end|>" (the stop token)
    stop_tokens: tuple[str, ...] = field(default_factory=tuple)  # generation stops on any of these
    add_special_tokens: bool = False  # passed to the tokenizer (SmolLM2's GGUF tokenizer misuses BOS)

    def format(self, question: str) -> str:
        return self.text.replace("{question}", question.strip())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PromptTemplate":
        data = dict(data)
        data["stop_tokens"] = tuple(data.get("stop_tokens", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PromptTemplate":
        return cls.from_dict(json.loads(text))


def normalize_answer(text: str) -> str:
    """Exact-match normalisation: lower case, no punctuation, single spaces."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(kept.split())
