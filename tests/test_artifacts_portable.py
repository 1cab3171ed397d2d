"""Artifacts record no absolute path of the machine that made them: every shipped file is scanned, and adapter /
backbone-parts files record their data relative to themselves (read back as the same place)."""
from __future__ import annotations

import re
from pathlib import Path

from crome_edge.gated_adapter import AdapterConfig, CromeAdapter
from crome_edge.adapter_file import AdapterMetadata, read_metadata, save_adapter
from crome_runtime.prompt import PromptTemplate
from crome_runtime.safetensors_header import read_metadata as read_header

SHIPPED = Path(__file__).resolve().parents[1] / "crome_edge" / "weights"
# an absolute POSIX path into a typical root, or a Windows drive path
ABSOLUTE = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|usr|opt|var|mnt|srv|Users|private)/|\b[A-Za-z]:\\\\")


def test_no_shipped_file_records_an_absolute_path():
    files = sorted(SHIPPED.glob("*.safetensors"))
    assert len(files) >= 3  # smol_vision, line3, line5
    for path in files:
        for key, value in read_header(path).items():
            assert not ABSOLUTE.search(value), f"{path.name}: metadata {key} records {ABSOLUTE.search(value).group(0)}…"


def test_adapter_records_its_data_relative_to_itself(tmp_path):
    data = tmp_path / "datasets" / "line3" / "data.jsonl"
    out_dir = tmp_path / "adapters"
    out_dir.mkdir()
    meta = AdapterMetadata(config=AdapterConfig(d_model=8, rank=2), backbone_name="tiny", backbone_fingerprint="0" * 64,
                           prompt=PromptTemplate(), train_data=str(data))
    save_adapter(out_dir / "a.safetensors", CromeAdapter(meta.config), meta)
    assert read_header(out_dir / "a.safetensors")["train_data"] == "../datasets/line3/data.jsonl"
    assert read_metadata(out_dir / "a.safetensors").train_data == str(data)  # read back as the same place
    moved = tmp_path / "elsewhere"
    (out_dir / "a.safetensors").rename(moved.with_suffix(".safetensors"))
    assert read_metadata(moved.with_suffix(".safetensors")).train_data == str(tmp_path.parent / "datasets" / "line3" / "data.jsonl")
