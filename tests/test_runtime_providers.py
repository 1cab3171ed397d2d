"""Execution-provider choice: the preference order, clear errors, and reading back what actually runs."""
import pytest

from crome_runtime import formats
from crome_runtime.errors import ProviderError
from crome_runtime.providers import ORT_NAMES, check_actual, plan

TRT, CUDA, CPU = ORT_NAMES["tensorrt"], ORT_NAMES["cuda"], ORT_NAMES["cpu"]


@pytest.mark.parametrize("available, expected", [
    ([TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ([CUDA, CPU], [CUDA, CPU]),
    (["AzureExecutionProvider", CPU], [CPU]),
])
def test_auto_prefers_tensorrt_then_cuda_then_cpu(tmp_path, available, expected):
    chosen = plan("auto", tmp_path, "int8", available)
    assert chosen.providers == expected
    assert chosen.device == ("cpu" if expected == [CPU] else "cuda")
    if TRT in expected:
        options = chosen.options[0]
        assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "True"
        assert options["trt_engine_cache_path"].startswith(str(tmp_path / formats.ENGINES_DIR))


def test_explicit_request_keeps_only_fallbacks_below_it(tmp_path):
    assert plan("cuda", tmp_path, "fp32", [TRT, CUDA, CPU]).providers == [CUDA, CPU]
    assert plan("cpu", tmp_path, "fp32", [TRT, CUDA, CPU]).providers == [CPU]


@pytest.mark.parametrize("requested", ["cuda", "tensorrt"])
def test_unavailable_provider_names_what_is_available_and_the_fix(tmp_path, requested):
    with pytest.raises(ProviderError) as error:
        plan(requested, tmp_path, "fp32", ["AzureExecutionProvider", CPU])
    message = str(error.value)
    assert ORT_NAMES[requested] in message and "AzureExecutionProvider, CPUExecutionProvider" in message
    assert "crome-edge[gpu]" in message and "--provider cpu" in message


def test_unknown_provider(tmp_path):
    with pytest.raises(ProviderError, match="not one of auto, cpu, cuda, tensorrt"):
        plan("vulkan", tmp_path, "fp32", [CPU])


def test_silent_cpu_fallback_is_an_error_when_asked_for_and_a_note_when_automatic(tmp_path):
    """onnxruntime-gpu registers CPU only when it cannot load CUDA: get_providers() shows it."""
    with pytest.raises(ProviderError, match="runs on CPUExecutionProvider"):
        check_actual(plan("cuda", tmp_path, "fp32", [CUDA, CPU]), "decoder", [CPU])
    note = check_actual(plan("auto", tmp_path, "fp32", [CUDA, CPU]), "decoder", [CPU])
    assert "could not load the GPU libraries" in note
    assert check_actual(plan("auto", tmp_path, "fp32", [CUDA, CPU]), "decoder", [CUDA, CPU]) is None


def test_prebuilt_engines_are_reported(tmp_path):
    (tmp_path / formats.ENGINES_DIR).mkdir()
    (tmp_path / formats.ENGINES_DIR / formats.ENGINES_MANIFEST).write_text("{}")
    assert any("build-engines" in note for note in plan("auto", tmp_path, "fp32", [CPU]).notes)
