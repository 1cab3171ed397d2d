"""C core fused gated projection (crome_gproj) against the numpy reference and the unfused math.

Tolerance: |C - numpy| <= 3e-5 * (1 + |y|) elementwise (float32 sums of d products in a different order,
FMA, and a polynomial exp in SiLU within 2 ulp). int8 weights are dequantised at load (W = q * scale),
exactly as the reference does, then run the same float32 kernel.
"""

import numpy as np
import pytest

from crome_runtime import ccore
from crome_runtime.ccore import GatedProjection, gated_projection_reference

pytestmark = pytest.mark.skipif(not ccore.available(), reason="C core not built (pip install -e .)")

RTOL = 3e-5


def _weights(d, r, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d, 2 * r)) * scale).astype(np.float32)  # (d, 2r) = [Wd | Wg]
    wu = (rng.standard_normal((r, d)) * scale).astype(np.float32)  # (r, d)
    return w1, wu


def _quantise(w):
    """Symmetric int8 per output column: w ~= q * scale[None, :]."""
    scale = np.abs(w).max(axis=0) / 127
    scale[scale == 0] = 1
    return np.round(w / scale).astype(np.int8), scale.astype(np.float32)


def _close(y, ref):
    assert y.shape == ref.shape and y.dtype == np.float32
    err = np.abs(y - ref) / (1 + np.abs(ref))
    assert err.max() <= RTOL, f"max scaled error {err.max():.2e} > {RTOL}"


@pytest.mark.parametrize("d, r", [(576, 64), (1, 1), (7, 3), (64, 17), (33, 40)])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 32])
def test_f32_matches_reference(d, r, n):
    w1, wu = _weights(d, r)
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    with GatedProjection(w1, wu) as g:
        _close(g.apply(x), gated_projection_reference(x, w1, wu))


@pytest.mark.parametrize("d, r", [(576, 64), (7, 3), (33, 40)])
@pytest.mark.parametrize("n", [1, 8, 13])
def test_int8_weights_are_dequantised_at_load(d, r, n):
    w1, wu = _weights(d, r, seed=2)
    (q1, s1), (qu, su) = _quantise(w1), _quantise(wu)
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    with GatedProjection(q1, qu, s1, su) as g:
        _close(g.apply(x), gated_projection_reference(x, q1, qu, s1, su))


def test_fused_equals_unfused_math():
    """docs/architecture.md §2: [Wd | Wg] as one GEMM is the per-modality Z = SiLU(X Wg) * (X Wd), Y = X + Z Wu."""
    d, r = 48, 8
    rng = np.random.default_rng(4)
    wd, wg = (rng.standard_normal((2, d, r)) * 0.2).astype(np.float32)
    wu = (rng.standard_normal((r, d)) * 0.2).astype(np.float32)
    x = rng.standard_normal((2, 5, d)).astype(np.float32)  # (B, Nq, d)
    gate = x.astype(np.float64) @ wg
    unfused = x + (gate / (1 + np.exp(-gate)) * (x.astype(np.float64) @ wd)) @ wu
    with GatedProjection(np.concatenate([wd, wg], axis=1), wu) as g:
        _close(g.apply(x), unfused.astype(np.float32))


def test_zero_up_projection_is_exact_identity():
    """A fresh adapter (Wu = 0) leaves the frozen model's embeddings bit-identical."""
    w1, _ = _weights(576, 64)
    x = np.random.default_rng(5).standard_normal((8, 576)).astype(np.float32)
    with GatedProjection(w1, np.zeros((64, 576), np.float32)) as g:
        np.testing.assert_array_equal(g.apply(x), x)


def test_batched_strided_and_in_place_inputs():
    d, r = 40, 6
    w1, wu = _weights(d, r)
    rng = np.random.default_rng(6)
    g = GatedProjection(w1, wu)
    x3 = rng.standard_normal((3, 5, d)).astype(np.float32)  # (B, N, d)
    _close(g.apply(x3), gated_projection_reference(x3, w1, wu))
    wide = rng.standard_normal((9, d + 7)).astype(np.float32)
    for view in (wide[:, :d], wide[::2, 3 : 3 + d], wide[::-1, :d], np.asfortranarray(wide[:, :d])):
        _close(g.apply(view), gated_projection_reference(np.ascontiguousarray(view), w1, wu))
    y = np.empty((9, d + 7), np.float32)[:, 2 : 2 + d]  # strided output rows
    _close(g.apply(wide[:, :d], out=y), gated_projection_reference(wide[:, :d], w1, wu))
    inplace = x3.copy()
    assert g.apply(inplace, out=inplace) is inplace
    _close(inplace, gated_projection_reference(x3, w1, wu))
    buf = rng.standard_normal((10, d)).astype(np.float32)
    expected = gated_projection_reference(buf[:9].copy(), w1, wu)
    _close(g.apply(buf[:9], out=buf[1:]), expected)  # partial overlap: x is copied first
    assert g.apply(np.zeros((0, d), np.float32)).shape == (0, d)


def test_shared_handle_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    w1, wu = _weights(576, 64)
    xs = [np.random.default_rng(i).standard_normal((8, 576)).astype(np.float32) for i in range(16)]
    with GatedProjection(w1, wu) as g, ThreadPoolExecutor(4) as pool:
        for x, y in zip(xs, pool.map(g.apply, xs)):
            _close(y, gated_projection_reference(x, w1, wu))


def test_bad_calls_raise():
    w1, wu = _weights(16, 4)
    q1, s1 = _quantise(w1)
    qu, su = _quantise(wu)
    with pytest.raises(ccore.CoreError, match=r"w1 \(d, 2r\) and wu \(r, d\)"):
        GatedProjection(w1, wu.T)
    with pytest.raises(ccore.CoreError, match="must both be float32 or both int8, got float32 and int8"):
        GatedProjection(w1, qu, None, su)
    with pytest.raises(ccore.CoreError, match="need w1_scale and wu_scale"):
        GatedProjection(q1, qu)
    with pytest.raises(ccore.CoreError, match="take neither"):
        GatedProjection(w1, wu, s1, su)
    with pytest.raises(ccore.CoreError, match=r"need w1_scale \(8,\)"):
        GatedProjection(q1, qu, su, s1)
    g = GatedProjection(w1, wu)
    for bad in (np.zeros((2, 16), np.float64), np.zeros((2, 15), np.float32), [0.0] * 16):
        with pytest.raises(ccore.CoreError, match=r"x must be float32 \(\.\.\., 16\)"):
            g.apply(bad)
    with pytest.raises(ccore.CoreError, match="out must be float32"):
        g.apply(np.zeros((2, 16), np.float32), out=np.zeros((3, 16), np.float32))
    with pytest.raises(ccore.CoreError, match="rows of one stride"):
        g.apply(np.zeros((2, 16), np.float32), out=np.zeros((16, 2), np.float32).T)
    g.close()
    g.close()  # idempotent
    with pytest.raises(ccore.CoreError, match="closed"):
        g.apply(np.zeros((2, 16), np.float32))
