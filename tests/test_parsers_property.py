"""Property tests (Hypothesis) over the parsers that read untrusted files: the bundle manifest, the prompt
template, adapter metadata, the safetensors header, dataset lines and image headers.

The one property: whatever the input, a parser returns a well-typed value or raises its own error class
(BundleError, ValueError, AdapterFileError, SafetensorsHeaderError, CromeError, ImageError) — never another
exception. Inputs are arbitrary JSON values and bytes, and valid files with one field replaced, removed or cut.
CI runs the derandomized `crome-ci` profile (a few seconds); a longer random search:

    HYPOTHESIS_PROFILE=crome-long python -m pytest -q tests/test_parsers_property.py -p no:cacheprovider
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crome_edge.errors import CromeError
from crome_runtime import formats
from crome_runtime.limits import MAX_TEXT_CHARS
from crome_runtime.adapter_entries import GRAPH_ROLES, AdapterEntry, Route
from crome_runtime.manifest import BackboneSpec, BundleError, FileEntry, LlmSpec, Manifest, check_file_name
from crome_runtime.preprocess import ImageError, decode_image
from crome_runtime.prompt import PromptTemplate
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_header


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _manifest(version: int = 2) -> dict:
    """A manifest document as crome-edge writes it (version 2), or as it wrote it before bundles held several
    adapters (version 1: one `adapter` section), which the reader reads into the same model."""
    manifest = Manifest(
        backbone=BackboneSpec(name="tiny", architecture="instructblip", d_model=64, num_query_tokens=4, image_size=32,
                              instruction_aware=True, image_mean=(0.48, 0.45, 0.40), image_std=(0.26, 0.26, 0.27),
                              fingerprint="ab" * 32),
        llm=LlmSpec(num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=259, max_position_embeddings=256),
        adapters=[AdapterEntry(name="line3", sha256="0" * 64, rank=16, route=Route(["Is it defective?"], ["Why .*"]),
                               training={"steps": 2})],
        prompt=PromptTemplate("Question: {question} Answer:", "</s>", ("</s>",)),
        precision="fp32",
        files={formats.VISION_ONNX: FileEntry("1" * 64, 10, "fp32"), formats.TOKENIZER_FILE: FileEntry("2" * 64, 5, "data")},
    )
    document = json.loads(manifest.to_json())
    if version == 1:
        (entry,) = document.pop("adapters")
        document.update(format_version=1, adapter={k: entry[k] for k in ("name", "sha256", "rank", "training")})
    return document


def _paths(value, prefix=()):
    """Every (path, ...) into a JSON value: the places a mutation can hit."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, prefix + (index,))


def _mutate(document, path, replacement, delete: bool):
    if not path:
        return replacement
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


def _check_manifest(manifest: Manifest) -> None:
    """What a parsed manifest guarantees its readers (engine, info, verify)."""
    assert isinstance(manifest.prompt.text, str) and isinstance(manifest.prompt.stop_tokens, tuple)
    assert all(isinstance(t, str) for t in manifest.prompt.stop_tokens)
    assert manifest.precision in formats.PRECISIONS
    assert min(manifest.backbone.image_std) > 0 and manifest.backbone.d_model >= 1
    assert manifest.generation.max_new_tokens >= 0
    for name in manifest.files:
        check_file_name(name)  # plain names only
    assert len(set(manifest.adapter_names)) == len(manifest.adapters)  # one model, whatever the version read
    for entry in manifest.adapters:
        assert isinstance(entry.route, Route) and isinstance(entry.max_new_tokens, int)
        for role in GRAPH_ROLES:
            check_file_name(entry.file(role))


@given(JSON)
def test_manifest_from_any_json_value(value):
    try:
        manifest = Manifest.from_json(json.dumps(value))
    except BundleError:
        return
    _check_manifest(manifest)


@given(st.text(max_size=200))
def test_manifest_from_any_text(text):
    try:
        _check_manifest(Manifest.from_json(text))
    except BundleError:
        return  # refused with its own error type: the property holds


@given(st.data(), JSON, st.booleans(), st.sampled_from([1, 2]))
def test_manifest_with_one_field_replaced_or_removed(data, replacement, delete, version):
    document = _manifest(version)
    paths = [p for p in _paths(document) if p]
    path = data.draw(st.sampled_from(paths))
    document = _mutate(document, path, replacement, delete)
    try:
        manifest = Manifest.from_json(json.dumps(document))
    except BundleError:
        return
    _check_manifest(manifest)


@given(JSON)
def test_prompt_template_from_any_json_value(value):
    try:
        template = PromptTemplate.from_dict(value)
    except ValueError:
        return
    assert isinstance(template.format("what?"), str) and isinstance(template.stop_tokens, tuple)


# --- adapter metadata and the safetensors header --------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="crome-property-") as directory:
        yield Path(directory)


def _adapter_file(path: Path, metadata) -> None:
    d, r = 8, 2
    shapes = {"visual.down": (d, r), "visual.gate": (d, r), "text.down": (d, r), "text.gate": (d, r), "up": (r, d)}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def _adapter_metadata() -> dict[str, str]:
    return {formats.META_FORMAT: formats.ADAPTER_FORMAT, formats.META_FORMAT_VERSION: str(formats.ADAPTER_FORMAT_VERSION),
            formats.META_ADAPTER_CONFIG: json.dumps({"d_model": 8, "rank": 2}), formats.META_BACKBONE_NAME: "tiny",
            formats.META_BACKBONE_FINGERPRINT: "ab" * 32,
            formats.META_PROMPT_TEMPLATE: PromptTemplate("Q: {question} A:", "</s>", ("</s>",)).to_json(),
            formats.META_TRAINING: json.dumps({"steps": 2}), formats.META_TRAIN_DATA: "data.jsonl"}


@given(st.data(), st.one_of(st.text(max_size=40), JSON.map(json.dumps)), st.booleans())
def test_adapter_metadata_with_one_entry_replaced_or_removed(scratch, data, value, delete):
    from crome_edge.adapter_file import AdapterFileError, load_adapter, read_metadata

    metadata = _adapter_metadata()
    key = data.draw(st.sampled_from(sorted(metadata)))
    if delete:
        del metadata[key]
    else:
        metadata[key] = value
    path = scratch / "adapter.safetensors"
    _adapter_file(path, metadata)
    try:
        meta = read_metadata(path)
        adapter, _ = load_adapter(path)
    except AdapterFileError:
        return
    assert isinstance(meta.training, dict) and meta.config.d_model == adapter.config.d_model == 8


@given(JSON)
def test_adapter_metadata_section_of_any_shape(scratch, metadata):
    from crome_edge.adapter_file import AdapterFileError, read_metadata

    path = scratch / "odd.safetensors"
    _adapter_file(path, metadata)
    try:
        read_metadata(path)
    except AdapterFileError:
        return  # refused with its own error type: the property holds


@given(st.binary(max_size=300))
def test_safetensors_header_of_any_bytes(scratch, blob):
    path = scratch / "blob.safetensors"
    path.write_bytes(blob)
    try:
        header = read_header(path)
    except SafetensorsHeaderError:
        return
    assert isinstance(header, dict)


@given(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 10_000))
def test_safetensors_header_cut_or_with_a_byte_changed(scratch, cut, byte, where):
    path = scratch / "mutated.safetensors"
    _adapter_file(path, _adapter_metadata())
    blob = bytearray(path.read_bytes())
    blob[where % len(blob)] = byte
    path.write_bytes(bytes(blob[: len(blob) - cut % len(blob)]))
    try:
        read_header(path)
    except SafetensorsHeaderError:
        return  # refused with its own error type: the property holds


# --- dataset lines ----------------------------------------------------------------------------------------------


@given(st.lists(st.one_of(JSON.map(json.dumps), st.text(max_size=60),
                          st.fixed_dictionaries({"image": st.text(max_size=30), "question": JSON, "answer": JSON}).map(json.dumps)),
                min_size=1, max_size=4))
def test_dataset_lines_of_any_content(scratch, lines):
    from crome_edge.data.dataset import load_dataset

    path = scratch / "data.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        dataset = load_dataset(path)
    except CromeError:
        return
    for sample in dataset.samples:
        for text in (sample.question, sample.answer):
            assert isinstance(text, str) and text.strip() and len(text) <= MAX_TEXT_CHARS
            text.encode("utf-8")


# --- image headers ----------------------------------------------------------------------------------------------

_IMAGE = np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)
_ENCODED = {ext: cv2.imencode(ext, _IMAGE)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp", ".tif", ".ppm")}


@given(st.sampled_from(sorted(_ENCODED)), st.integers(0, 4096), st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)),
                                                                         max_size=4))
def test_image_decoder_on_cut_or_changed_files(ext, cut, changes):
    blob = bytearray(_ENCODED[ext])
    for where, value in changes:
        blob[where % min(len(blob), 96)] = value  # the header bytes
    blob = bytes(blob[: max(0, len(blob) - cut % (len(blob) + 1))])
    try:
        image = decode_image(blob)
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@given(st.binary(max_size=200))
def test_image_decoder_on_any_bytes(blob):
    try:
        decode_image(blob)
    except ImageError:
        return  # refused with its own error type: the property holds
