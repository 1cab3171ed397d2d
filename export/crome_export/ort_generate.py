"""A minimal numpy + onnxruntime pipeline over a bundle's graphs: vision -> adapter -> greedy decoding.

The exporter uses it to prove a bundle answers like PyTorch (fidelity.py). It mirrors
CromeModel.generate step by step: instruction ids right-padded with 0 for the Q-Former, prefix =
concat(adapter_visual(V), adapter_text(E[prompt ids])) per row, rows left-padded, position_ids =
cumsum(mask) - 1, one prefill with an empty KV cache (P = 0), then one decode step per token with the
token's plain embedding-table row. Torch-free. Deliberately small and isolated: the runtime engine
(crome_runtime, C core, TensorRT) replaces it; it is also the reference for how to drive each graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crome_runtime import formats
from crome_runtime.prompt import PromptTemplate


@dataclass
class GraphPaths:
    vision: Path
    adapter_visual: Path
    adapter_text: Path
    decoder: Path

    @classmethod
    def in_dir(cls, directory: Path) -> "GraphPaths":
        return cls(directory / formats.VISION_ONNX, directory / formats.ADAPTER_VISUAL_ONNX,
                   directory / formats.ADAPTER_TEXT_ONNX, directory / formats.DECODER_ONNX)


def vision_feeds(pixels: np.ndarray, questions: list[str], info, qformer_tokenizer) -> dict[str, np.ndarray]:
    """pixels (B, 3, S, S) float32 -> vision-graph feeds; `info` has instruction_aware, max_instruction_tokens."""
    feeds = {formats.IN_PIXEL_VALUES: np.ascontiguousarray(pixels, dtype=np.float32)}
    if info.instruction_aware:
        rows = [qformer_tokenizer.encode(q).ids[: info.max_instruction_tokens] for q in questions]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)  # right-padded with 0, like CromeModel
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        feeds[formats.IN_INSTRUCTION_IDS], feeds[formats.IN_INSTRUCTION_MASK] = ids, mask
    return feeds


def left_pad(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (L_i, d) prefixes -> embeds (B, L, d), attention_mask (B, L), position_ids (B, L)."""
    width, d = max(r.shape[0] for r in rows), rows[0].shape[1]
    embeds = np.zeros((len(rows), width, d), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        embeds[i, width - row.shape[0] :], mask[i, width - row.shape[0] :] = row, 1
    return embeds, mask, np.maximum(mask.cumsum(-1) - 1, 0)


class OrtPipeline:
    def __init__(self, paths: GraphPaths, info, llm, prompt: PromptTemplate, embeddings: np.ndarray,
                 tokenizer, qformer_tokenizer=None, threads: int | None = None):
        """info: BackboneSpec/BackboneInfo; llm: LlmSpec (num_layers, num_kv_heads, head_dim)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in vars(paths).items()
        }
        self.info, self.llm, self.prompt = info, llm, prompt
        self.embeddings, self.tokenizer, self.qformer_tokenizer = embeddings, tokenizer, qformer_tokenizer
        self.stop_ids = {tokenizer.token_to_id(t) for t in prompt.stop_tokens} - {None}

    @classmethod
    def from_bundle(cls, bundle: Path, threads: int | None = None) -> "OrtPipeline":
        from tokenizers import Tokenizer

        from crome_runtime.manifest import read_manifest

        manifest = read_manifest(bundle)
        qformer = bundle / formats.QFORMER_TOKENIZER_FILE
        return cls(
            GraphPaths.in_dir(bundle), manifest.backbone, manifest.llm, manifest.prompt,
            np.load(bundle / formats.EMBEDDINGS_FILE), Tokenizer.from_file(str(bundle / formats.TOKENIZER_FILE)),
            Tokenizer.from_file(str(qformer)) if qformer.is_file() else None, threads,
        )

    # --- one stage each -------------------------------------------------------------------------
    def vision(self, pixels: np.ndarray, questions: list[str]) -> np.ndarray:
        feeds = vision_feeds(pixels, questions, self.info, self.qformer_tokenizer)
        return self.sessions["vision"].run(None, feeds)[0]  # (B, Nq, d)

    def adapter(self, x: np.ndarray, modality: str) -> np.ndarray:
        session = self.sessions[f"adapter_{modality}"]
        return session.run(None, {formats.IN_ADAPTER_X: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def prompt_ids(self, question: str) -> list[int]:
        text = self.prompt.format(question)
        return self.tokenizer.encode(text, add_special_tokens=self.prompt.add_special_tokens).ids

    def prefix(self, visual: np.ndarray, questions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Projected V (B, Nq, d) -> left-padded LLM prefix (embeds, attention_mask, position_ids)."""
        adapted_visual = self.adapter(visual, "visual")  # (B, Nq, d)
        rows = []
        for i, question in enumerate(questions):
            text = self.adapter(self.embeddings[self.prompt_ids(question)][None], "text")[0]  # (Nt, d)
            rows.append(np.concatenate([adapted_visual[i], text]))
        return left_pad(rows)

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.llm.num_kv_heads, 0, self.llm.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.llm.num_layers)]

    def decoder_step(self, embeds, attention_mask, position_ids, past: list[np.ndarray]):
        """-> logits (B, 1, vocab), present KV (list of 2·layers arrays (B, kv_heads, P + S, head_dim))."""
        feeds = {formats.IN_INPUTS_EMBEDS: embeds, formats.IN_ATTENTION_MASK: attention_mask,
                 formats.IN_POSITION_IDS: position_ids}
        for i in range(self.llm.num_layers):
            feeds[formats.past_key_name(i)], feeds[formats.past_value_name(i)] = past[2 * i], past[2 * i + 1]
        logits, *present = self.sessions["decoder"].run(None, feeds)
        return logits, present

    # --- the whole answer -----------------------------------------------------------------------
    def generate(self, pixels: np.ndarray, questions: list[str], max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy decoding; the generated ids per row, without the stop token (as CromeModel.generate)."""
        embeds, mask, positions = self.prefix(self.vision(pixels, questions), questions)
        batch = embeds.shape[0]
        logits, cache = self.decoder_step(embeds, mask, positions, self.empty_cache(batch))
        generated: list[list[int]] = [[] for _ in range(batch)]
        finished = [False] * batch
        for _ in range(max_new_tokens):
            tokens = logits[:, -1].argmax(-1)  # (B,)
            for b, token in enumerate(tokens.tolist()):
                if not finished[b]:
                    if token in self.stop_ids:
                        finished[b] = True
                    else:
                        generated[b].append(token)
            if all(finished) or len(generated[0]) >= max_new_tokens:
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits, cache = self.decoder_step(self.embeddings[tokens][:, None], mask, positions, cache)
        return generated

    def answer(self, pixels: np.ndarray, questions: list[str], max_new_tokens: int = 16) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.generate(pixels, questions, max_new_tokens)]
