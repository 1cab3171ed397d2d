"""Prompt template: how a question becomes the LLM's prompt ids, where an answer ends, and the instruction
an instruction-aware Q-Former reads.

Torch-free: the trainer (CromeModel), the exporter (manifest) and the runtime (Engine) tokenise through
these functions, so an FP32 bundle sees exactly the ids PyTorch saw. The visual tokens come first and the
template's text follows them, unless the template names an `image_token` (LLaVA's and Idefics3's chat templates
put the image inside the prompt): then the text is tokenised whole, the one image token is taken out, and the
visual tokens go where it was (`image_at`), exactly as the HF processor expands it. `tokenizer` is a
`tokenizers.Tokenizer` (only `encode` and `token_to_id` are used).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from crome_runtime import input_files
from crome_runtime.limits import listed


@dataclass(frozen=True)
class PromptTemplate:
    text: str = "{question}"  # the text prompt; "{question}" is replaced by the user's question
    answer_suffix: str = ""  # appended to every answer in training, e.g. "<|im_end|>" (the stop token)
    stop_tokens: tuple[str, ...] = field(default_factory=tuple)  # generation stops on any of these
    add_special_tokens: bool = False  # passed to the tokenizer (SmolLM2's GGUF tokenizer misuses BOS)
    image_token: str = ""  # where the visual tokens go inside `text` (one occurrence); "" = before the text

    def format(self, question: str) -> str:
        return self.text.replace("{question}", question.strip())

    def encode(self, tokenizer, text: str) -> list[int]:
        """Ids of `text` as the template tokenises it (with or without the tokenizer's special tokens)."""
        return tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        """The LLM's text-prompt ids for a question: the template around it, tokenised (the image token taken out)."""
        return self.prompt_parts(tokenizer, question)[0]

    def image_at(self, tokenizer, question: str) -> int:
        """How many of `prompt_ids` come before the visual tokens (0 without an image token)."""
        return self.prompt_parts(tokenizer, question)[1]

    def prompt_parts(self, tokenizer, question: str) -> tuple[list[int], int]:
        """(prompt ids without the image token, where the visual tokens go among them). ValueError when the
        question itself holds the image token (the prompt would name two images)."""
        ids = self.encode(tokenizer, self.format(question))
        if not self.image_token:
            return ids, 0
        image_id = tokenizer.token_to_id(self.image_token)
        at = [i for i, token in enumerate(ids) if token == image_id]
        if len(at) != 1:
            raise ValueError(f"the prompt must hold the image token {self.image_token!r} once, it holds it {len(at)} "
                             "times; remove it from the question")
        return ids[: at[0]] + ids[at[0] + 1 :], at[0]

    def answer_ids(self, tokenizer, answer: str) -> list[int]:
        """A training answer's ids plus the stop suffix, so the model learns where to stop."""
        return self.encode(tokenizer, answer.strip() + self.answer_suffix)

    def stop_ids(self, tokenizer) -> frozenset[int]:
        """Ids generation stops on: the stop tokens the tokenizer knows (the others are ignored)."""
        return frozenset(i for i in (tokenizer.token_to_id(t) for t in self.stop_tokens) if i is not None)

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.image_token:  # written only where used: older readers load every other template unchanged
            del data["image_token"]
        return data

    @classmethod
    def from_dict(cls, data) -> "PromptTemplate":
        """A template from its JSON form (a manifest's or an adapter file's), every field's type checked: ValueError
        naming the field (a `stop_tokens` string is refused, not split into characters)."""
        if not isinstance(data, dict):
            raise ValueError(f"the prompt template must be a JSON object, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"the prompt template has unknown fields {listed([repr(u)[:60] for u in unknown], ', ')} "
                             f"(known: {sorted(known)})")
        for name in ("text", "answer_suffix", "image_token"):
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"the prompt template's {name} must be a string, not {type(data[name]).__name__}")
        if "add_special_tokens" in data and not isinstance(data["add_special_tokens"], bool):
            raise ValueError("the prompt template's add_special_tokens must be true or false")
        stops = data.get("stop_tokens", ())
        if not isinstance(stops, (list, tuple)) or not all(isinstance(t, str) and t for t in stops):
            raise ValueError(f"the prompt template's stop_tokens must be a list of token strings, got {stops!r:.80}")
        return cls(**{**data, "stop_tokens": tuple(stops)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PromptTemplate":
        return cls.from_dict(input_files.loads(text, "the prompt template"))


def instruction_ids(tokenizer, question: str, max_tokens: int) -> list[int]:
    """An instruction-aware Q-Former's ids for a question (its own tokenizer), cut to its `max_tokens` budget."""
    return tokenizer.encode(question).ids[:max_tokens]


def normalize_answer(text: str) -> str:
    """Exact-match normalisation: lower case, no punctuation, single spaces."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(kept.split())
