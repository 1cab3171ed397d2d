"""A bundle's files are plain names inside the bundle, or the bundle is refused — before anything outside it
is stat'ed, hashed or opened — and a malformed manifest is a BundleError, never a traceback."""
import json
import os
from pathlib import Path

import pytest

from crome_cli.main import main
from crome_runtime import formats
from crome_runtime.bundle import load_bundle
from crome_runtime.manifest import BundleError, read_manifest
from tests.support.bundles import copy_bundle, rewrite_manifest, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)["bundle"]


def _with_extra_entry(bundle: Path, tmp_path: Path, name: str) -> Path:
    copy = copy_bundle(bundle, tmp_path / "b.bundle")
    entry = {"sha256": "0" * 64, "bytes": 1, "precision": "data"}
    rewrite_manifest(copy, lambda data: data["files"].__setitem__(name, entry))
    return copy


@pytest.mark.parametrize("name", ["../../outside.txt", "/etc/passwd", "sub/vision.onnx", ".hidden", "..", "",
                                  "a\\b", "nul\x00byte"])
def test_names_that_leave_the_bundle_are_refused_before_any_file_is_read(bundle, tmp_path, name):
    copy = _with_extra_entry(bundle, tmp_path, name)
    for verify in (True, False):
        with pytest.raises(BundleError, match="not a plain file name inside the bundle"):
            read_manifest(copy, verify=verify)


def test_info_and_run_refuse_such_a_bundle_without_revealing_outside_paths(bundle, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    copy = _with_extra_entry(bundle, tmp_path, f"../{secret.name}")
    assert main(["info", str(copy)]) == 2
    assert main(["info", str(copy), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "not a plain file name" in err and "private" not in err


def test_a_symlinked_graph_is_refused_even_when_its_bytes_match(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path / "b.bundle")
    outside = tmp_path / "elsewhere.onnx"
    os.replace(copy / formats.VISION_ONNX, outside)
    (copy / formats.VISION_ONNX).symlink_to(outside)  # same bytes, so the sha256 would pass
    with pytest.raises(BundleError, match="symbolic link"):
        read_manifest(copy, verify=True)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(copy, verify=False)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.__setitem__("files", list(d["files"])), "`files` must map"),
    (lambda d: d.__setitem__("format_version", "one"), "format_version must be an integer"),
    (lambda d: d.__setitem__("precision", "int3"), "precision 'int3'"),
    (lambda d: d["llm"].__setitem__("num_layers", {"x": 1}) or d["llm"].pop("head_dim"), "malformed fields"),
])
def test_malformed_manifest_fields_are_bundle_errors(bundle, tmp_path, edit, message):
    copy = copy_bundle(bundle, tmp_path / "b.bundle")
    rewrite_manifest(copy, edit)
    with pytest.raises(BundleError, match=message):
        read_manifest(copy, verify=False)


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b"\xff\xfe not utf-8 \x80", b"null"])
def test_a_manifest_that_is_not_an_object_or_not_text_is_refused(bundle, tmp_path, content):
    copy = copy_bundle(bundle, tmp_path / "b.bundle")
    (copy / formats.MANIFEST_FILE).write_bytes(content)
    with pytest.raises(BundleError):
        read_manifest(copy, verify=False)


def test_the_exported_bundle_itself_still_loads(bundle):
    assert json.loads((bundle / formats.MANIFEST_FILE).read_text())["files"]
    assert load_bundle(bundle, verify=True).manifest.files
