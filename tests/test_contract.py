"""The torch-free contract training, export and the runtime share (crome_runtime: formats, manifest, prompt,
safetensors_header, cache_dir): one backbone schema, one tokenisation, one header reader that tells a truncated
or foreign file from a good one."""
import json
import struct
import subprocess
import sys
from dataclasses import asdict, fields

import numpy as np
import pytest
from safetensors.numpy import save_file

from crome_runtime.manifest import BackboneSchema, BackboneSpec, Manifest
from crome_runtime.prompt import PromptTemplate, instruction_ids
from crome_runtime.safetensors_header import SafetensorsHeaderError, read_header, read_metadata, tensor_shapes

CONTRACT = ("crome_runtime.formats", "crome_runtime.manifest", "crome_runtime.prompt", "crome_runtime.sampling",
            "crome_runtime.safetensors_header", "crome_runtime.user_cache_dir")


def test_contract_modules_import_without_torch_or_cv2():
    code = (f"import sys; import {', '.join(CONTRACT)}; "
            "bad = [m for m in ('torch', 'cv2', 'transformers') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_backbone_info_and_the_manifest_share_one_schema(tiny_backbone):
    info, spec = tiny_backbone.info, tiny_backbone.spec()
    schema = {f.name for f in fields(BackboneSchema)}
    assert {f.name for f in fields(BackboneSpec)} == schema | {"fingerprint"}
    assert {f.name for f in fields(type(info))} == schema | {"prompt"}
    assert spec.schema_fields() == info.schema_fields() and spec.fingerprint == tiny_backbone.fingerprint()
    assert isinstance(spec.image_mean, tuple) and len(spec.image_mean) == 3
    section = json.loads(json.dumps({"backbone": asdict(spec)}))["backbone"]  # as manifest.json holds it
    assert BackboneSpec(**section) == spec  # lists read back as the tuples they were written from


def test_a_manifest_backbone_with_missing_or_unknown_fields_is_a_bundle_error(tiny_backbone):
    from crome_runtime.manifest import BundleError

    good = {"format": "crome-bundle", "format_version": 1, "backbone": asdict(tiny_backbone.spec()),
            "llm": {}, "adapter": {}, "prompt": {}, "precision": "fp32", "files": {}}
    for change, named in (({"image_mean": None}, "image_mean"), ({"colour": "red"}, "colour"),
                          ({"image_std": 5}, "int")):
        bad = {**good, "backbone": {**good["backbone"], **change}}
        bad["backbone"] = {k: v for k, v in bad["backbone"].items() if v is not None}
        with pytest.raises(BundleError, match=f"malformed fields.*{named}"):
            Manifest.from_json(json.dumps(bad))


def test_prompt_stop_and_instruction_ids_are_the_backbones(tiny_backbone):
    tokenizer, template = tiny_backbone.llm_tokenizer, tiny_backbone.info.prompt
    assert template.prompt_ids(tokenizer, "  What colour?  ") == tiny_backbone.tokenize(template.format("What colour?"))
    assert template.answer_ids(tokenizer, "red")[-len(template.encode(tokenizer, template.answer_suffix)):] == \
        template.encode(tokenizer, template.answer_suffix)
    assert template.stop_ids(tokenizer) == tiny_backbone.stop_token_ids() and tiny_backbone.stop_token_ids()
    assert PromptTemplate(stop_tokens=("<not a token>",)).stop_ids(tokenizer) == frozenset()
    long_question = "is it " * 40
    ids = instruction_ids(tiny_backbone.qformer_tokenizer, long_question, 7)
    assert ids == tiny_backbone.qformer_tokenizer.encode(long_question).ids[:7]
    assert tiny_backbone.tokenize_instruction(long_question) == instruction_ids(
        tiny_backbone.qformer_tokenizer, long_question, tiny_backbone.info.max_instruction_tokens)


def test_header_reader_reads_names_shapes_and_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int64)}, str(path), metadata={"format": "x"})
    header = read_header(path)
    assert tensor_shapes(header) == {"w": (2, 3), "b": (4,)} and read_metadata(path) == {"format": "x"}
    save_file({"w": np.zeros(1, np.float32)}, str(path))
    assert read_metadata(path) == {}


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:4], "too few"),
    (lambda data: data[:20], "header is .* but the file ends"),
    (lambda data: data[:-3], "truncated"),
    (lambda data: data + b"\0", "trailing bytes"),
    (lambda data: struct.pack("<Q", 1 << 40) + data[8:], "not a safetensors file"),
    (lambda data: b"PK\x03\x04" + data[4:], "not a safetensors file"),
    (lambda data: struct.pack("<Q", 4) + b"[1] " + data[12:], "not a JSON object"),
])
def test_header_reader_refuses_truncated_and_foreign_files(tmp_path, damage, message):
    path = tmp_path / "a.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32)}, str(path), metadata={"format": "x"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SafetensorsHeaderError, match=message):
        read_header(path)
