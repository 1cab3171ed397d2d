"""`--bf16` is honoured only where the device computes bf16 natively (crome_edge.training.precision), decided
from feature dicts, never from the ISA of the machine the tests run on."""
import pytest

from crome_edge.training.precision import decide_bf16
from crome_runtime.machine import features

AVX2 = {"avx2": True, "avx512f": False, "avx512bw": False, "avx512_vnni": False, "avx_vnni": False,
        "avx512_bf16": False, "amx_bf16": False, "amx_int8": False}
AVX512 = {**AVX2, "avx512f": True, "avx512bw": True, "avx512_vnni": True}  # AVX-512 without its bf16 extension
AVX512_BF16 = {**AVX512, "avx512_bf16": True}
SAPPHIRE_RAPIDS = {**AVX512_BF16, "amx_bf16": True, "amx_int8": True}
NEOVERSE_V1 = {"neon": True, "dotprod": True, "i8mm": True, "bf16": True, "sve": True}
CORTEX_A78 = {"neon": True, "dotprod": True, "i8mm": False, "bf16": False, "sve": False}  # Jetson Orin's CPU


@pytest.mark.parametrize("found, native", [
    (AVX2, False), (AVX512, False), (AVX512_BF16, True), (SAPPHIRE_RAPIDS, True), ({**AVX2, "amx_bf16": True}, True),
    (NEOVERSE_V1, True), (CORTEX_A78, False), ({}, False),
])
def test_cpu_uses_bf16_only_with_native_bf16(found, native):
    choice = decide_bf16(True, "cpu", found, cpu_model="Test CPU")
    assert choice.use is native
    if native:
        assert choice.note is None
    else:
        assert "Test CPU has no native bf16" in choice.note and "training in fp32" in choice.note


def test_not_asking_for_bf16_never_uses_it_and_says_nothing():
    for device, found in (("cpu", SAPPHIRE_RAPIDS), ("cpu", AVX2), ("cuda", None)):
        choice = decide_bf16(False, device, found)
        assert choice.use is False and choice.note is None


def test_cuda_uses_bf16_where_the_gpu_has_it():
    assert decide_bf16(True, "cuda", AVX2, cuda_bf16=True).use is True  # the CPU does not matter on a GPU
    older = decide_bf16(True, "cuda", SAPPHIRE_RAPIDS, cuda_bf16=False)
    assert older.use is False and "compute capability 8.0" in older.note


def test_other_devices_fall_back_with_a_reason():
    choice = decide_bf16(True, "mps", NEOVERSE_V1)
    assert choice.use is False and "'mps'" in choice.note


def test_feature_dicts_come_from_cpuinfo_text():
    avx2 = "flags\t\t: fpu sse2 avx avx2 fma\n"
    bf16 = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
    assert decide_bf16(True, "cpu", features(avx2, "x86_64")).use is False
    assert decide_bf16(True, "cpu", features(bf16, "x86_64")).use is True
    assert decide_bf16(True, "cpu", features("Features\t: fp asimd asimddp i8mm bf16\n", "aarch64")).use is True
    assert decide_bf16(True, "cpu", features("Features\t: fp asimd asimddp\n", "aarch64")).use is False
