"""The torch-free engine: a bundle answers questions about frames, streaming text as tokens arrive.

    engine = Engine.load("line3.bundle", EngineConfig(threads=2))
    frame = engine.frame("part.png")                       # capture + preprocess (C core), once per frame
    for piece in engine.stream(frame, "Is the part defective?"):
        print(piece, end="", flush=True)
    answer = engine.answer(frame, "What colour is it?")    # -> Answer(text, token_ids, finish_reason, ...)

Pipeline per answer: frame -> vision.onnx -> visual adapter (cached per frame, or per frame and question
for an instruction-aware Q-Former) ; prompt -> tokenizer -> embedding rows -> text adapter (cached per
prompt) ; concat -> prefill -> decode with the KV cache (decoder.py: IO binding, buffers
allocated once) -> sampler (C core) -> streaming detokeniser. Which adapter answers (the bundle's routes, a
name, or none: the frozen backbone) and everything per adapter (sessions, C kernels, generation cap, caches)
is the engine's AdapterSet (adapter_set.py), made the same way at load and at a hot-swap (reload_adapters). Generation stops on the prompt template's
stop tokens, at max_new_tokens, or at the end of the decoder's context. The same steps as
CromeModel.generate (batch 1), so an FP32 bundle gives PyTorch's tokens. The adapter runs in the C core's
fused kernel when the decoder runs on the CPU (adapter_kernel.py), else as the bundle's adapter graphs. Every
stage is timed by the engine's profiler (profiler.py). The stages are public methods (vision, adapt,
prompt_ids, prefill, step): the answer path is built from them, and the fidelity check (fidelity.py, for
`crome-edge export` and `crome-edge verify`) measures each one against PyTorch through them. One engine
serves one thread at a time.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator, Iterator

import numpy as np

from crome_runtime import explain as explain_module
from crome_runtime import formats, providers
from crome_runtime.adapter_set import AdapterSet, choose_backend
from crome_runtime.adapter_versions import version_of
from crome_runtime.bundle import Bundle, GraphSignature, check_graphs, load_bundle
from crome_runtime.confidence import Confidence, Meter, branch_paths, score_candidates
from crome_runtime.lru_cache import LRUCache
from crome_runtime.decoder import KVDecoder
from crome_runtime.detokenize import StreamDetokenizer
from crome_runtime.errors import EngineError, PromptTooLong
from crome_runtime.limits import TextError, check_text, context_problem
from crome_runtime.profiler import Profiler, Run, now
from crome_runtime.sampling import SamplingParams, sample_next_token
from crome_runtime.shared_sessions import SharedSessions
from crome_runtime.vision_inputs import vision_feeds

if TYPE_CHECKING:
    from crome_runtime.cdecoder import CDecoder


@dataclass
class EngineConfig:
    provider: str = "auto"  # auto | cpu | cuda | tensorrt (providers.py)
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 = one per core
    # idle ORT worker threads spin (lower latency; set False on a shared CPU). Off whatever this says when the C
    # decoder runs on the CPU: ORT's spinning workers kept the cores from its pool after every prefill
    spin: bool = True
    verify: bool = True  # sha256 of every bundle file at load
    adapter: str = "auto"  # "c" (C core kernel), "onnx" (the adapter graphs), auto: c when the decoder runs on CPU
    # "c": decode steps in the C core on the bundle's GGUF blocks (cdecoder.py; ONNX still prefills), "onnx": the
    # decoder graph only; auto: c on CPU when the bundle has decoder blocks whose export gates passed
    decoder: str = "auto"
    # per adapter (and for the frozen backbone): frames (or frame + question) whose adapted visual queries are kept;
    # also the number of the vision graph's own outputs kept (shared by every adapter)
    vision_cache: int = 8
    text_cache: int = 64  # per adapter: prompts whose adapted text embeddings are kept


@dataclass
class GenerationOptions:
    """None = the bundle's default (manifest `generation`)."""

    max_new_tokens: int | None = None
    temperature: float | None = None  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int = 0
    # which adapter answers: None = the bundle's routes (crome_runtime.adapter_entries), "none" = the frozen backbone
    # alone, or an adapter's name
    adapter: str | None = None
    # score a closed-set adapter's answer set after the answer (Answer.confidence.candidates; confidence.py): a decoder
    # run per answer (one batched ONNX run, or a C step per distinct answer-prefix token), so only when asked. The
    # margin and the mean log-probability are always measured (read off logits the answer computes anyway)
    candidates: bool = False

    def resolve(self, defaults) -> tuple[int, SamplingParams]:
        pick = lambda mine, default: default if mine is None else mine  # noqa: E731
        max_new = int(pick(self.max_new_tokens, defaults.max_new_tokens))
        if max_new < 0:
            raise EngineError(f"max_new_tokens must be >= 0, got {max_new}")
        try:
            params = SamplingParams(
                temperature=float(pick(self.temperature, defaults.temperature)),
                top_k=int(pick(self.top_k, defaults.top_k)),
                top_p=float(pick(self.top_p, defaults.top_p)),
                repetition_penalty=float(pick(self.repetition_penalty, defaults.repetition_penalty)),
            )
        except ValueError as error:
            raise EngineError(str(error)) from None
        return max_new, params


@dataclass(frozen=True)
class Frame:
    """A preprocessed frame: the vision graph's input and the identity its vision output is cached under."""

    key: str
    pixels: np.ndarray  # (3, S, S) float32, normalised

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, key: str | None = None) -> "Frame":
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        return cls(key or pixel_key(pixels), pixels)


def vision_key(frame: Frame, question: str, instruction_aware: bool):
    """What a frame's vision output is cached under: the frame, and the question when the Q-Former reads it."""
    return (frame.key, question) if instruction_aware else frame.key


def pixel_key(pixels: np.ndarray) -> str:
    """Content identity of a preprocessed frame (what the vision graph sees): blake2b of its bytes."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).hexdigest()


@dataclass
class Answer:
    text: str
    token_ids: list[int]  # without the stop token
    finish_reason: str  # "stop" | "length" | "context" (decoder context full) | "cancelled"
    prompt_tokens: int  # prefix length: visual queries + prompt tokens
    ttft_ms: float | None
    total_ms: float | None
    timings_ms: dict[str, float]  # stage -> ms in this answer
    cache: dict[str, bool]  # {"vision": hit, "text": hit}
    adapter: str | None = None  # the adapter that answered; None: the frozen backbone alone
    adapter_version: str | None = None  # the sha256 of its .safetensors (its manifest entry); None: no adapter
    confidence: Confidence = field(default_factory=Confidence)  # how sure (confidence.py)


class AnswerStream:
    """Text pieces as they are decoded; `answer` holds the Answer once the stream is exhausted (or closed)."""

    def __init__(self, engine: "Engine", image, prompt: str, options: GenerationOptions):
        if not isinstance(prompt, str) or not prompt.strip():
            raise EngineError("the prompt is empty; ask a question about the image")
        try:
            check_text(prompt, "the prompt")  # crome_runtime.limits: length and UTF-8, as every command checks
        except TextError as error:
            raise EngineError(str(error)) from None
        self.adapter = engine.route(prompt, options.adapter)  # EngineError for an unknown name
        max_new, params = options.resolve(engine.generation_defaults(self.adapter))  # EngineError before anything runs
        self.answer: Answer | None = None
        self._pieces = engine._generate(self, image, prompt, max_new, params, options, self.adapter)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()


@dataclass
class _State:
    """One answer in progress (what `Answer` is made from)."""

    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finish: str = "cancelled"
    prompt_tokens: int = 0
    cache: dict[str, bool] = field(default_factory=dict)
    adapter: str | None = None
    adapter_version: str | None = None
    meter: Meter = field(default_factory=lambda: Meter(SamplingParams()))
    candidates: dict[str, float] | None = None
    candidate_mass: float | None = None


class Engine:
    def __init__(self, bundle: Bundle, config: EngineConfig | None = None, profiler: Profiler | None = None,
                 sessions: SharedSessions | None = None):
        """sessions: where sessions over graph bytes another engine opened the same way are taken from (export's
        candidates); None: this engine opens its own."""
        self.bundle, self.config = bundle, config or EngineConfig()
        self._shared = sessions
        self.manifest = bundle.manifest
        self.profiler = profiler or Profiler()
        self.plan = providers.plan(self.config.provider, bundle.path, self.manifest.precision)
        # on a CPU-only plan the decode path is known before any session opens (it reads the blocks file's header once)
        c_on_cpu = self.plan.device == "cpu" and self._use_c_decoder(on_gpu=False)
        self.spin = self.config.spin and not c_on_cpu
        self.sessions = {graph: self._open(bundle.graph_path(graph)) for graph in ("vision", "decoder")}
        self._signatures = {graph: GraphSignature.of_session(s) for graph, s in self.sessions.items()}
        check_graphs(bundle, self._signatures)
        on_gpu = self.sessions["decoder"].get_providers()[0] in (providers.ORT_NAMES["cuda"],
                                                                  providers.ORT_NAMES["tensorrt"])
        # the adapters: sessions, C kernels, routes, pins, generation caps and caches (adapter_set.py)
        self.adapters = AdapterSet.open(bundle, self._open, self._signatures,
                                        choose_backend(self.config.adapter, bundle, on_gpu), self._cache_sizes())
        actual = {graph: list(s.get_providers()) for graph, s in self.sessions.items()}
        actual.update(self.adapters.session_providers())
        notes = list(self.plan.notes) + list(bundle.notes) + _version_notes(self.manifest.tools)
        for graph, names in actual.items():
            note = providers.check_actual(self.plan, graph, names)  # raises when an explicit request fell back
            if note:
                notes.append(note)
        self.providers = providers.ProviderReport(self.config.provider, self.plan.providers, actual, notes)
        llm, d = self.manifest.llm, self.manifest.backbone.d_model
        self.decoder: KVDecoder | CDecoder = KVDecoder(self.sessions["decoder"], llm.num_layers, llm.num_kv_heads, llm.head_dim, d,
                                 llm.vocab_size, "cuda" if on_gpu else "cpu")
        self.decoder_backend = "onnx"
        use_c = c_on_cpu if self.plan.device == "cpu" else self._use_c_decoder(on_gpu)  # CPU: decided above
        if use_c:
            from crome_runtime.cdecoder import open_cdecoder

            self.decoder, self.decoder_backend = open_cdecoder(bundle, self.decoder, self.config.threads), "c"
        self.embeddings = bundle.embeddings  # (vocab, d) float32, C-contiguous
        self._row_bytes = d * 4
        self._recent = np.zeros(0, np.int64)  # generated ids for the repetition penalty, grown with the answer
        self.raw_vision_cache = LRUCache(self.config.vision_cache)  # the vision graph's output, shared by every adapter
        self._candidate_ids: dict[tuple, list[list[int]]] = {}  # (adapter, answer set) -> each answer's token ids
        self._explain_weights: dict[str, explain_module.VisualWeights] = {}  # sha256 -> weights (explain())

    def _open(self, path):
        def create(path):
            return providers.open_session(path, self.plan, self.config.threads, self.spin)

        if self._shared is None:
            return create(path)
        entry = self.manifest.files.get(Path(path).name)
        how = (repr(self.plan.session_arguments()), self.config.threads, self.spin)
        return self._shared.open(path, entry.sha256 if entry is not None else None, how, create)

    def _cache_sizes(self) -> tuple[int, int]:
        return self.config.vision_cache, self.config.text_cache

    # --- adapters: which one answers ----------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return self.adapters.names

    @property
    def adapter_backend(self) -> str:
        """"c" (the C core's fused kernel) or "onnx" (the adapter graphs)."""
        return self.adapters.backend

    def route(self, question: str, adapter: str | None = None) -> str | None:
        """The adapter that answers `question` (AdapterSet.route): the pinned one, else `adapter` when given ("none":
        the frozen backbone alone), else the bundle's routes; None means the frozen backbone with no adapter."""
        return self.adapters.route(question, adapter)

    def pin(self, adapter: str | None):
        """Every answer and stage call inside uses `adapter` (AdapterSet.pin): how export and verify measure one
        adapter of a bundle."""
        return self.adapters.pin(adapter)

    def generation_defaults(self, adapter: str | None):
        """The generation defaults an answer by `adapter` starts from: the manifest's, with the adapter's own cap."""
        return self.adapters.generation_defaults(adapter, self.manifest.generation)

    def reload_adapters(self) -> dict:
        """Hot-swap: re-reads the bundle directory (after `crome-edge bundle add/remove` swapped it) and takes its
        adapters, keeping the vision and decoder sessions. Everything is checked before anything changes: the
        backbone's files must be the ones loaded (same sha256), new or changed adapters are opened exactly as at
        load (AdapterSet.open); on any error (BundleError/EngineError) the engine serves on with the adapters it
        had. Call it between answers (an engine serves one thread): an answer in progress finishes on the adapter
        it started with. -> {"added", "replaced", "removed", "kept"}: adapter names."""
        bundle = load_bundle(self.bundle.path, verify=self.config.verify)
        old, new = self.manifest, bundle.manifest

        def backbone_files(m) -> dict:
            owned = m.adapter_files() | {formats.REPORT_FILE}
            return {n: e.sha256 for n, e in m.files.items() if n not in owned}

        if new.backbone.fingerprint != old.backbone.fingerprint or backbone_files(new) != backbone_files(old):
            raise EngineError(f"the bundle {bundle.path} now has other backbone files than the ones this engine runs; "
                              "restart the server to load it (only adapters are swapped while serving)")
        adapters = AdapterSet.open(bundle, self._open, self._signatures, self.adapters.backend, self._cache_sizes(),
                                   previous=self.adapters)
        report = adapters.changes(self.adapters)
        self.bundle, self.manifest, self.adapters = bundle, new, adapters
        return report

    def _use_c_decoder(self, on_gpu: bool) -> bool:
        from crome_runtime import ccore
        from crome_runtime.cdecoder import bundle_blocks_usable

        choice = self.config.decoder
        if choice not in ("auto", "c", "onnx"):
            raise EngineError(f"decoder backend {choice!r} is not one of auto, c, onnx")
        if choice == "onnx":
            return False
        why_not = "the decoder runs on a GPU" if on_gpu else bundle_blocks_usable(self.bundle) or (
            None if ccore.available() else "the C core is not built")
        if choice == "c" and why_not:
            raise EngineError(f"decoder='c' cannot run: {why_not}; use decoder='onnx'")
        return why_not is None

    @classmethod
    def load(cls, bundle: str | os.PathLike, config: EngineConfig | None = None,
             profiler: Profiler | None = None, sessions: SharedSessions | None = None) -> "Engine":
        """Reads and verifies the bundle (BundleError on any problem), opens its sessions (or takes them from
        `sessions`, shared_sessions.py), checks their dims."""
        config = config or EngineConfig()
        return cls(load_bundle(bundle, verify=config.verify), config, profiler, sessions)

    # --- frames -------------------------------------------------------------------------------------
    def frame(self, image, pixfmt: str = "bgr", key: str | None = None) -> Frame:
        """An image file path or a camera frame (uint8 array in `pixfmt`: bgr, rgb, yuyv, nv12) -> Frame.
        key: the frame's identity for the vision cache (default: a hash of the preprocessed pixels)."""
        from crome_runtime.preprocess import load_image, preprocess_frame

        prof = self.profiler
        if isinstance(image, (str, os.PathLike)):
            t = now()
            image = load_image(image)  # ImageError: missing, unreadable, 0x0, over the pixel limit (header check)
            prof.record("capture", t)
            pixfmt = "bgr"
        if not isinstance(image, np.ndarray):
            raise EngineError(f"an image is a file path or a uint8 numpy frame, got {type(image).__name__}")
        b = self.manifest.backbone
        t = now()
        pixels = preprocess_frame(image, pixfmt, b.image_size, b.image_mean, b.image_std, resize=b.resize)  # (3, S, S)
        frame = Frame(key or pixel_key(pixels), pixels)
        prof.record("preprocess", t)
        return frame

    def frame_from_pixels(self, pixels: np.ndarray, key: str | None = None) -> Frame:
        """An already preprocessed (3, S, S) float32 frame (e.g. from crome_edge.data's pixel store)."""
        size = self.manifest.backbone.image_size
        if pixels.shape != (3, size, size):
            raise EngineError(f"preprocessed pixels must be (3, {size}, {size}) for this bundle, got {pixels.shape}")
        return Frame.from_pixels(pixels, key)

    # --- answering ----------------------------------------------------------------------------------
    def stream(self, image, prompt: str, options: GenerationOptions | None = None) -> AnswerStream:
        """Iterate for the answer's text pieces; `.answer` has the Answer afterwards. image: Frame, path or array."""
        return AnswerStream(self, image, prompt, options or GenerationOptions())

    def answer(self, image, prompt: str, options: GenerationOptions | None = None) -> Answer:
        stream = self.stream(image, prompt, options)
        for _ in stream:
            pass
        assert stream.answer is not None  # an exhausted stream holds its answer
        return stream.answer

    def clear_caches(self) -> None:
        self.adapters.clear_caches()
        self.raw_vision_cache.clear()

    def _generate(self, stream: AnswerStream, image, prompt: str, max_new: int, params: SamplingParams,
                  options: GenerationOptions, adapter: str | None = None) -> Generator[str, None, None]:
        prof = self.profiler
        prof.begin_run("answer")
        entry = self.adapters.entry(adapter)
        state = _State(adapter=adapter, adapter_version=version_of(entry) if entry else None, meter=Meter(params))
        try:
            frame = image if isinstance(image, Frame) else self.frame(image)
            visual, state.cache["vision"] = self._visual(frame, prompt, adapter)  # (Nq, d)
            text, state.cache["text"] = self._text(prompt, adapter)  # (Nt, d)
            prefix = self.join_prefix(visual, text, prompt)[None]  # (1, L, d)
            length = state.prompt_tokens = prefix.shape[1]
            budget = min(max_new, self.manifest.llm.max_position_embeddings - length)
            if self._recent.size < budget:
                self._recent = np.zeros(max(budget, 2 * self._recent.size), np.int64)
            logits = self.prefill(prefix, budget)  # (vocab,)
            answers = entry.answers if entry is not None and options.candidates else []
            first = logits.copy() if answers else None  # the view is overwritten by the first decode step
            yield from self._decode(logits, max_new, budget, params, np.random.default_rng(options.seed), state)
            if first is not None and entry is not None:
                state.candidates, state.candidate_mass = self.candidates(first, length, entry.name, answers)
        finally:
            run = prof.end_run({"prompt": prompt})
            assert run is not None  # the run begun above
            self._finish(stream, run, state)

    def _decode(self, logits, max_new: int, budget: int, params: SamplingParams, rng, state: _State) -> Iterator[str]:
        prof, stop_ids, recent, tokens = self.profiler, self.bundle.stop_ids, self._recent, state.tokens
        detokenizer = StreamDetokenizer(self.bundle.tokenizer)
        for step in range(max_new):  # state.finish stays "cancelled" if the consumer closes the stream mid-answer
            if step == budget:
                state.finish = "context"
                break
            if step:
                logits = self.step(tokens[-1])
            t = now()
            token = sample_next_token(logits, params, recent[:step], rng)
            prof.record("sample", t)
            t = now()
            state.meter.drawn(logits, recent[:step], token)  # before the stop check: stopping is drawn too
            prof.record("confidence", t)
            if token in stop_ids:
                state.finish = "stop"
                break
            prof.token()
            tokens.append(token)
            recent[step] = token
            t = now()
            piece = detokenizer.push(token)
            prof.record("detokenize", t)
            if piece:
                state.pieces.append(piece)
                yield piece
        else:
            state.finish = "length"
        tail = detokenizer.finish()
        if tail:
            state.pieces.append(tail)
            yield tail

    def _finish(self, stream: AnswerStream, run: Run, state: _State) -> None:
        confidence = state.meter.confidence(state.candidates, state.candidate_mass)
        stream.answer = Answer("".join(state.pieces), list(state.tokens), state.finish, state.prompt_tokens,
                               run.ttft_ms, run.total_ms, run.timings_ms(), dict(state.cache), state.adapter,
                               state.adapter_version, confidence)

    # --- stages: the answer path is made of these; the fidelity check (crome_runtime.fidelity) calls them too ---
    def vision(self, frame: Frame, question: str) -> np.ndarray:
        """The vision graph's output V (Nq, d) for a frame (and the question, for an instruction-aware Q-Former)."""
        t = now()
        feeds = vision_feeds(frame.pixels[None], [question], self.manifest.backbone, self.bundle.qformer_tokenizer)
        visual = self.sessions["vision"].run([formats.OUT_VISUAL_EMBEDS], feeds)[0]  # (1, Nq, d)
        b = self.manifest.backbone
        if visual.shape != (1, b.num_query_tokens, b.d_model):  # a graph whose dims are not what it declared
            raise EngineError(f"{formats.VISION_ONNX} returned {visual.shape}, the manifest says (1, "
                              f"{b.num_query_tokens}, {b.d_model}); re-export the bundle")
        self.profiler.record("vision", t)
        return visual[0]

    def adapt(self, x: np.ndarray, modality: str, adapter: str | None = "") -> np.ndarray:
        """(N, d) -> (N, d) through the adapter branch of `modality` ("visual" | "text"): C kernel or ONNX graph.
        adapter: a name; None = no adapter (x itself: the adapter is the identity when absent); "" (default) = the
        pinned adapter, or the bundle's only one."""
        if adapter == "":
            adapter = self.adapters.stage_adapter()
        if adapter is None:
            return x
        t = now()
        y = self.adapters.apply(adapter, modality, np.ascontiguousarray(x, dtype=np.float32))
        self.profiler.record(f"adapter_{modality}", t)
        return y

    def prompt_ids(self, question: str) -> list[int]:
        """The decoder's prompt ids for a question: the bundle's template around it, tokenised."""
        t = now()
        ids = self.manifest.prompt.prompt_ids(self.bundle.tokenizer, question)  # crome_runtime.prompt, as CromeModel
        self.profiler.record("tokenize", t)
        return ids

    def join_prefix(self, visual: np.ndarray, text: np.ndarray, question: str) -> np.ndarray:
        """The decoder's prefix (L, d) from adapted visual (Nq, d) and text (Nt, d) rows: the visual rows first, or
        where the template's image token was (LLaVA, Idefics3: crome_runtime.prompt), as CromeModel.prefix_rows."""
        if not self.manifest.prompt.image_token:
            return np.concatenate([visual, text])
        at = self.manifest.prompt.image_at(self.bundle.tokenizer, question)
        return np.concatenate([text[:at], visual, text[at:]])

    def prefill(self, prefix: np.ndarray, room: int = 1) -> np.ndarray:
        """A prefix (1, L, d) or (L, d) into an empty KV cache with room for `room` more tokens -> logits (vocab,)
        (a view of the decoder's buffer, overwritten by the next call)."""
        prefix = np.ascontiguousarray(prefix, dtype=np.float32).reshape(1, -1, self.manifest.backbone.d_model)
        self.decoder.reserve(prefix.shape[1] + room)
        t = now()
        logits = self.decoder.prefill(prefix)
        self.profiler.record("prefill", t)
        return logits

    def step(self, token: int) -> np.ndarray:
        """One decode step on `token` (its plain embedding-table row) after prefill -> logits (vocab,) (a view)."""
        if not 0 <= token < self.embeddings.shape[0]:
            raise EngineError(f"token id {token} is outside the vocabulary of {self.embeddings.shape[0]}")
        t = now()
        logits = self.decoder.step(self.embeddings.ctypes.data + int(token) * self._row_bytes)
        self.profiler.record("decode", t)
        return logits

    def branch_logits(self, prefix_length: int, paths: list[tuple[int, ...]]) -> np.ndarray:
        """Logits (len(paths), vocab) after each token path continuing the last prefill's first `prefix_length`
        tokens (its KV cache shared, not recomputed; the decoder's branch_logits: one batched run on ONNX, a walk
        of C steps on the C decoder)."""
        vocab = self.embeddings.shape[0]
        if any(not 0 <= token < vocab for path in paths for token in path):
            raise EngineError(f"a path holds a token id outside the vocabulary of {vocab}")
        return self.decoder.branch_logits(prefix_length, paths, self.embeddings)

    def candidates(self, first: np.ndarray, prefix_length: int, adapter: str, answers: list[str]):
        """(answer -> probability within the set, the set's unnormalised mass) of `answers` after the prompt whose
        logits are `first` (vocab,) and whose KV cache holds `prefix_length` tokens (confidence.score_candidates);
        (None, None) when the longest answer does not fit the decoder's context."""
        sequences = self._answer_ids(adapter, answers)
        if prefix_length + max(map(len, sequences)) > self.manifest.llm.max_position_embeddings:
            return None, None
        t = now()
        paths = branch_paths(sequences)
        logits = self.branch_logits(prefix_length, paths) if paths else np.zeros((0, first.size), np.float32)
        scored = score_candidates(answers, sequences, first, dict(zip(paths, logits)))
        self.profiler.record("candidates", t)
        return scored

    def _answer_ids(self, adapter: str, answers: list[str]) -> list[list[int]]:
        """Each answer's ids as training scored them (the answer plus the template's stop suffix), per answer set."""
        key = (adapter, tuple(answers))
        ids = self._candidate_ids.get(key)
        if ids is None:
            ids = self._candidate_ids[key] = [self.manifest.prompt.answer_ids(self.bundle.tokenizer, a) for a in answers]
        return ids

    def visual_cache(self, adapter: str | None) -> LRUCache:
        """`adapter`'s adapted visual queries, keyed by vision_key() (None: the frozen backbone's): what the Triton
        backend's batched vision stage fills (crome_runtime.triton.backend)."""
        return self.adapters.caches(adapter).vision

    def _visual(self, frame: Frame, question: str, adapter: str | None) -> tuple[np.ndarray, bool]:
        """Adapted visual queries (Nq, d) of a frame (and question, for an instruction-aware Q-Former) for `adapter`,
        cached per adapter; the vision graph's output is cached once and shared by every adapter. -> (queries, hit)
        where hit: the vision graph did not run."""
        key = vision_key(frame, question, self.manifest.backbone.instruction_aware)
        cache = self.visual_cache(adapter)
        cached = cache.get(key)
        if cached is not None:
            return cached, True
        raw = self.raw_vision_cache.get(key)
        hit = raw is not None
        if raw is None:
            raw = self.vision(frame, question)  # (Nq, d)
            self.raw_vision_cache.put(key, raw)
        adapted = self.adapt(raw, "visual", adapter)  # (Nq, d); raw itself when no adapter answers
        cache.put(key, adapted)
        return adapted, hit

    def _text(self, question: str, adapter: str | None) -> tuple[np.ndarray, bool]:
        """Adapted prompt embeddings (Nt, d) for `adapter`: the template around the question, tokenised, embedded,
        adapted (cached per adapter and prompt)."""
        text = self.manifest.prompt.format(question)
        cache = self.adapters.caches(adapter).text
        cached = cache.get(text)
        if cached is not None:
            return cached, True
        ids = self.prompt_ids(question)
        self._check_context(len(ids))
        embedded = self.embeddings[ids]  # (Nt, d), a copy (fancy indexing)
        adapted = self.adapt(embedded, "text", adapter)  # embedded itself when no adapter answers
        cache.put(text, adapted)
        return adapted, False

    def _check_context(self, prompt_tokens: int) -> None:
        """PromptTooLong when the prompt leaves no room for an answer (crome_runtime.limits, the rule `ask` uses)."""
        queries, context = self.manifest.backbone.num_query_tokens, self.manifest.llm.max_position_embeddings
        if context_problem(prompt_tokens, 0, queries, context):  # only then: how many tokens are the template's own
            template = len(self.manifest.prompt.prompt_ids(self.bundle.tokenizer, ""))
            raise PromptTooLong(context_problem(prompt_tokens, template, queries, context))

    # --- explain (only when asked: the answer path above never reads the attention output) ------------------------
    def can_explain(self) -> str | None:
        """None when this bundle's vision graph has the query_attention output `explain` needs, else why not."""
        if formats.OUT_QUERY_ATTENTION in self._signatures["vision"].outputs:
            return None
        return (f"this bundle's {formats.VISION_ONNX} has no {formats.OUT_QUERY_ATTENTION} output (it was exported "
                f"before --explain existed, or its vision tower has no square patch grid); re-export it to get heat maps: "
                f"{explain_module.REEXPORT}")

    def explain(self, frame: Frame, question: str, adapter: str | None) -> "explain_module.Explanation":
        """The heat map of an answer by `adapter` (the name Answer.adapter holds; None: the frozen backbone) to
        `question` about `frame` (crome_runtime.explain). Runs the vision graph for both its outputs (its visual
        output as the answer's own, bit for bit), timed as stage "explain". EngineError when the bundle cannot
        explain (can_explain)."""
        why_not = self.can_explain()
        if why_not:
            raise EngineError(why_not)
        t = now()
        feeds = vision_feeds(frame.pixels[None], [question], self.manifest.backbone, self.bundle.qformer_tokenizer)
        visual, attention = self.sessions["vision"].run([formats.OUT_VISUAL_EMBEDS, formats.OUT_QUERY_ATTENTION],
                                                        feeds)  # (1, Nq, d), (1, Nq, gh, gw)
        weights = None if adapter is None else self._visual_weights(adapter)
        result = explain_module.explain(visual[0], attention[0], weights, adapter)
        self.profiler.record("explain", t)
        return result

    def _visual_weights(self, adapter: str) -> "explain_module.VisualWeights":
        """The adapter's visual branch weights, read from its .safetensors once per file (sha256)."""
        entry = next((e for e in self.manifest.adapters if e.name == adapter), None)
        name = entry.file("weights") if entry is not None else None
        if name is None or name not in self.manifest.files:
            raise EngineError(f"adapter {adapter!r} has no weights file in this bundle, which --explain reads; "
                              f"re-export it: {explain_module.REEXPORT}")
        key = self.manifest.files[name].sha256
        cached = self._explain_weights.get(key)
        if cached is None:
            cached = explain_module.VisualWeights.read(self.bundle.path / name)
            self._explain_weights = {key: cached}  # the adapter last explained: a hot-swap replaces it
        return cached

    # --- description --------------------------------------------------------------------------------
    def describe(self) -> dict:
        m = self.manifest
        return {
            "bundle": str(self.bundle.path), "backbone": m.backbone.name, "adapters": self.adapter_names,
            "precision": m.precision, "providers": self.providers.to_dict(), "threads": self.config.threads,
            "adapter_backend": self.adapter_backend, "decoder_backend": self.decoder_backend,
            "kv_cache": {"device": self.decoder.device, "capacity_tokens": self.decoder.capacity,
                         "bytes": self.decoder.kv_bytes, "allocations": self.decoder.allocations},
            "caches": {**self.adapters.cache_stats(), "raw_vision": self.raw_vision_cache.stats()},
        }


def _version_notes(tools: dict) -> list[str]:
    """A bundle exported with a newer onnxruntime than this one may use operators this one lacks."""
    import onnxruntime as ort

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())

    exported = tools.get("onnxruntime")
    if exported and key(exported) > key(ort.__version__):
        return [f"the bundle was exported with onnxruntime {exported}; this device has {ort.__version__} (upgrade it "
                "if a graph fails to load or runs differently)"]
    return []
