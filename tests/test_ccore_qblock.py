"""crome_qmatvec (GGUF Q4_1 / Q8_0 blocks x float32 vector) against numpy's dequantise-then-matmul, on odd
sizes, 1-3 threads and every ISA path this CPU runs (the portable path always); the numpy dequantiser
against the gguf package's, bit for bit; bad calls raise CoreError."""

import numpy as np
import pytest

from crome_runtime import ccore, gguf_blocks

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize  # noqa: E402

GGML = {"q4_1": gguf.GGMLQuantizationType.Q4_1, "q8_0": gguf.GGMLQuantizationType.Q8_0}
SHAPES = [(1, 32), (37, 224), (17, 96), (129, 576), (5, 1536)]
PATHS = [name for name in ccore.ISAS if name != "auto"]


def _blocks(qtype, rows, cols, seed=0):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return quantize(w, GGML[qtype])


@pytest.mark.parametrize("qtype", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_dequantize_is_gguf_bit_for_bit(qtype, rows, cols):
    blocks = _blocks(qtype, rows, cols)
    ours, theirs = gguf_blocks.dequantize(blocks, qtype), gguf.quants.dequantize(blocks, GGML[qtype])
    assert ours.dtype == np.float32 and ours.shape == (rows, cols)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("qtype", ["q4_1", "q8_0"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_qmatvec_matches_dequantised_matmul(isa, qtype, threads):
    if not ccore.isa_supported(isa):
        pytest.skip(f"this CPU cannot run the {isa} path")
    pool = ccore.Pool(threads)
    for i, (rows, cols) in enumerate(SHAPES):
        blocks = _blocks(qtype, rows, cols, seed=i)
        w = gguf_blocks.dequantize(blocks, qtype).astype(np.float64)
        x = np.random.default_rng(100 + i).standard_normal(cols).astype(np.float32)
        exact = w @ x.astype(np.float64)
        y = ccore.qmatvec(blocks, qtype, x, isa, pool)
        # the weights are the dequantised float32 exactly; only float32 summation order differs
        bound = 1e-6 * (np.abs(w) @ np.abs(x).astype(np.float64))
        assert np.all(np.abs(y - exact) <= bound), (rows, cols, np.abs(y - exact).max())


def test_paths_agree_and_threads_do_not_change_bits():
    blocks = _blocks("q4_1", 129, 576)
    x = np.random.default_rng(1).standard_normal(576).astype(np.float32)
    for isa in PATHS:
        if ccore.isa_supported(isa):
            one = ccore.qmatvec(blocks, "q4_1", x, isa)
            assert np.array_equal(one, ccore.qmatvec(blocks, "q4_1", x, isa, ccore.Pool(3)))  # rows split only


def test_auto_is_the_best_supported_path():
    best = ccore.isa_best()
    assert ccore.isa_supported(best) and ccore.isa_supported("scalar")


def test_bad_calls_raise():
    blocks = _blocks("q8_0", 4, 64)
    x = np.zeros(64, np.float32)
    with pytest.raises(ccore.CoreError, match="block format"):
        ccore.qmatvec(blocks, "q5_0", x)
    with pytest.raises(ccore.CoreError, match="x must be float32 \\(64,\\)"):
        ccore.qmatvec(blocks, "q8_0", np.zeros(32, np.float32))
    with pytest.raises(ccore.CoreError, match="x must be float32"):
        ccore.qmatvec(blocks, "q8_0", x.astype(np.float64))
    with pytest.raises(ccore.CoreError, match="whole|n_blocks"):
        ccore.qmatvec(blocks[:, :60].copy(), "q8_0", x)
    with pytest.raises(ccore.CoreError, match="uint8"):
        ccore.qmatvec(blocks.view(np.int8), "q8_0", x)
    with pytest.raises(ccore.CoreError, match="ISA"):
        ccore.qmatvec(blocks, "q8_0", x, "sse9")
    missing = [isa for isa in PATHS if not ccore.isa_supported(isa)]
    if missing:
        with pytest.raises(ccore.CoreError, match="cannot run"):
            ccore.qmatvec(blocks, "q8_0", x, missing[0])
    with pytest.raises(ccore.CoreError, match="1 .. 256"):
        ccore.Pool(0)
    assert ccore.qrow_bytes("q4_1", 576) == 360 and ccore.qrow_bytes("q8_0", 576) == 612
    with pytest.raises(ccore.CoreError, match="multiple of 32"):
        ccore.qrow_bytes("q4_1", 100)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_memread_reads_every_byte(threads):
    data = np.random.default_rng(threads).integers(0, 256, 100_003, dtype=np.uint8)
    words = np.frombuffer(data[: len(data) // 8 * 8].tobytes(), np.uint64)
    want = int(np.bitwise_xor.reduce(words)) ^ int.from_bytes(data[len(data) // 8 * 8:].tobytes(), "little")
    assert ccore.memread(data, ccore.Pool(threads)) == want
    with pytest.raises(ccore.CoreError, match="C-contiguous"):
        ccore.memread(data[::2])


@pytest.mark.parametrize("isa", PATHS)
def test_block_offsets_and_cancellation(isa):
    """The AVX2 / NEON paths compute a Q4_1 block as d·Σ q x + m·Σ x (qblock.c): blocks whose minimum m dwarfs their
    range d (weights 3 ± 0.01), blocks of zero-mean weights whose products cancel, and an x with a large common
    offset stay within float32 summation error of the exact product, like the per-weight form."""
    if not ccore.isa_supported(isa):
        pytest.skip(f"this CPU cannot run the {isa} path")
    rng = np.random.default_rng(5)
    w = np.concatenate([3.0 + 0.01 * rng.standard_normal((40, 576)), rng.standard_normal((40, 576)),
                        -0.5 + 1e-3 * rng.standard_normal((40, 576))]).astype(np.float32)
    for qtype in ("q4_1", "q8_0"):
        blocks = quantize(w, GGML[qtype])
        deq = gguf_blocks.dequantize(blocks, qtype).astype(np.float64)
        for x in (rng.standard_normal(576), 10.0 + rng.standard_normal(576), np.sign(deq[40]) * rng.random(576)):
            x = x.astype(np.float32)
            y = ccore.qmatvec(blocks, qtype, x, isa)
            bound = 1e-6 * (np.abs(deq) @ np.abs(x).astype(np.float64))
            assert np.all(np.abs(y - deq @ x.astype(np.float64)) <= bound), (qtype, np.abs(y - deq @ x).max())
