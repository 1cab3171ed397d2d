"""Adapter files: round trip, and every bad file is refused with a message that says what to do."""
import json

import pytest
import torch
from safetensors.torch import save_file

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.adapter_file import (
    AdapterFileError, AdapterMetadata, adapter_tensors, load_adapter, read_metadata, save_adapter,
)
from crome_runtime import formats


def _adapter(d=64, r=8, seed=0):
    torch.manual_seed(seed)
    adapter = CromeAdapter(AdapterConfig(d_model=d, rank=r))
    torch.nn.init.normal_(adapter.up, std=0.1)
    return adapter


def _metadata(backbone, adapter, **changes):
    meta = AdapterMetadata(
        config=adapter.config, backbone_name=backbone.info.name, backbone_fingerprint=backbone.fingerprint(),
        prompt=backbone.info.prompt, training={"stage": "finetune", "steps": 3}, train_data="/data/line3.jsonl",
    )
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def _write_raw(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def test_round_trip_keeps_tensors_and_metadata(tmp_path, tiny_backbone):
    adapter = _adapter()
    path = tmp_path / "line3.safetensors"
    save_adapter(path, adapter, _metadata(tiny_backbone, adapter))
    loaded, meta = load_adapter(path, tiny_backbone)
    for name, tensor in adapter_tensors(adapter).items():
        assert torch.equal(adapter_tensors(loaded)[name], tensor)
    assert meta.config == adapter.config and meta.backbone_fingerprint == tiny_backbone.fingerprint()
    assert meta.prompt == tiny_backbone.info.prompt
    assert meta.training == {"stage": "finetune", "steps": 3} and meta.train_data == "/data/line3.jsonl"
    assert read_metadata(path) == meta
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_save_into_a_missing_directory_is_refused(tmp_path, tiny_backbone):
    adapter = _adapter()
    with pytest.raises(AdapterFileError, match="does not exist"):
        save_adapter(tmp_path / "nope" / "a.safetensors", adapter, _metadata(tiny_backbone, adapter))


def test_truncated_file(tmp_path, tiny_backbone):
    adapter = _adapter()
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter, _metadata(tiny_backbone, adapter))
    data = path.read_bytes()
    for keep in (len(data) - 100, 20, 4):
        path.write_bytes(data[:keep])
        with pytest.raises(AdapterFileError, match="truncated"):
            load_adapter(path)


def test_not_safetensors_and_not_an_adapter(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip, or a pickle, or anything else" * 10)
    with pytest.raises(AdapterFileError, match="not a readable safetensors file"):
        load_adapter(path)
    _write_raw(path, {"weight": torch.zeros(2)}, {"format": "pt"})
    with pytest.raises(AdapterFileError, match="not a crome-edge adapter"):
        load_adapter(path)
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf(tmp_path, tiny_backbone, bad):
    adapter = _adapter()
    tensors = {k: v.detach().clone() for k, v in adapter_tensors(adapter).items()}
    tensors["text.gate"][3, 2] = bad
    _write_raw(tmp_path / "a.safetensors", tensors, _metadata(tiny_backbone, adapter).to_strings())
    with pytest.raises(AdapterFileError, match="text.gate contains NaN or Inf"):
        load_adapter(tmp_path / "a.safetensors")


def test_wrong_shapes_names_and_dtypes(tmp_path, tiny_backbone):
    adapter = _adapter()
    good = {k: v.detach().clone() for k, v in adapter_tensors(adapter).items()}
    meta = _metadata(tiny_backbone, adapter).to_strings()
    path = tmp_path / "a.safetensors"
    _write_raw(path, {**good, "up": torch.zeros(8, 32)}, meta)
    with pytest.raises(AdapterFileError, match=r"up has shape \(8, 32\), expected \(8, 64\)"):
        load_adapter(path)
    _write_raw(path, {k: v for k, v in good.items() if k != "up"}, meta)
    with pytest.raises(AdapterFileError, match="do not match the CROME adapter"):
        load_adapter(path)
    _write_raw(path, {**good, "up": torch.zeros(8, 64, dtype=torch.int32)}, meta)
    with pytest.raises(AdapterFileError, match="dtype"):
        load_adapter(path)
    # config says rank 16 but the tensors are rank 8
    _write_raw(path, good, {**meta, formats.META_ADAPTER_CONFIG: AdapterConfig(64, 16).to_json()})
    with pytest.raises(AdapterFileError, match=r"expected \(64, 16\) for d=64, r=16"):
        load_adapter(path)


def test_other_backbones_fingerprint_is_refused_with_the_fix(tmp_path, tiny_backbone):
    from crome_edge.backbones.tiny import build_tiny

    other = build_tiny(1)  # same shapes, different weights
    adapter = _adapter()
    path = tmp_path / "line3.safetensors"
    save_adapter(path, adapter, _metadata(other, adapter))
    with pytest.raises(AdapterFileError) as error:
        load_adapter(path, tiny_backbone)
    message = str(error.value)
    assert f"fingerprint {other.fingerprint()[:12]}" in message and tiny_backbone.fingerprint()[:12] in message
    assert "Re-train the adapter on this backbone or pass --backbone" in message
    load_adapter(path, other)  # the right backbone loads it
    load_adapter(path)  # and without a backbone there is nothing to compare


def test_width_mismatch_is_refused(tmp_path, tiny_backbone):
    adapter = _adapter(d=32)
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter, _metadata(tiny_backbone, adapter))
    with pytest.raises(AdapterFileError, match=r"d=32.*d=64"):
        load_adapter(path, tiny_backbone)


def test_newer_format_version_and_malformed_metadata(tmp_path, tiny_backbone):
    adapter = _adapter()
    tensors = {k: v.detach().clone() for k, v in adapter_tensors(adapter).items()}
    meta = _metadata(tiny_backbone, adapter).to_strings()
    path = tmp_path / "a.safetensors"
    _write_raw(path, tensors, {**meta, formats.META_FORMAT_VERSION: str(formats.ADAPTER_FORMAT_VERSION + 1)})
    with pytest.raises(AdapterFileError, match="Upgrade crome-edge"):
        load_adapter(path)
    _write_raw(path, tensors, {k: v for k, v in meta.items() if k != formats.META_BACKBONE_FINGERPRINT})
    with pytest.raises(AdapterFileError, match="incomplete or malformed"):
        load_adapter(path)
    _write_raw(path, tensors, {**meta, formats.META_ADAPTER_CONFIG: json.dumps({"d_model": 64, "rnk": 8})})
    with pytest.raises(AdapterFileError, match="incomplete or malformed"):
        load_adapter(path)
