"""NGD (eq. 3) via per-example weights: exact mean, covariance Σ₁/B, chunk invariance."""

import functools
import math

import pytest
import torch

from paperlib.ngd import gd_weights, ngd_weights, split_chunks
from paperlib.seeding import STREAM_NGD, generator

from problems import DT, linear_regression


def test_weights_sum_to_one_and_match_formula():
    n, B = 1000, 16
    w = ngd_weights(n, B, generator=generator(0, STREAM_NGD, 7))
    assert w.shape == (n,) and w.dtype == DT
    assert abs(float(w.sum()) - 1.0) < 1e-12
    z = torch.randn(n, generator=generator(0, STREAM_NGD, 7), dtype=DT)
    expect = 1.0 / n + (z - z.mean()) / math.sqrt(n * B)
    assert torch.allclose(w, expect, rtol=0, atol=1e-15)
    # counter-based seeding: same (seed, stream, step) -> same weights; next step differs
    assert torch.equal(w, ngd_weights(n, B, generator=generator(0, STREAM_NGD, 7)))
    assert not torch.equal(w, ngd_weights(n, B, generator=generator(0, STREAM_NGD, 8)))
    w32 = ngd_weights(n, B, generator=generator(0, STREAM_NGD, 7), dtype=torch.float32)
    assert w32.dtype == torch.float32 and torch.allclose(w32.double(), w, atol=1e-7)


N_POP, D, B_NGD, S = 40, 3, 5, 20_000


@functools.cache
def ngd_noise(finite: bool) -> torch.Tensor:
    """S draws of ξ = Σ_i w_i ∇ℓ_i − ∇L on the toy (population 40, d = 3, B = 5): [S, d]."""
    toy = linear_regression(N_POP, D, seed=4)
    per_ex, grad = toy.per_example, toy.grad
    gen = torch.Generator().manual_seed(5 + int(finite))
    W = torch.stack(
        [ngd_weights(N_POP, B_NGD, generator=gen, finite_population=finite) for _ in range(S)]
    )
    return W @ per_ex - grad


@pytest.mark.parametrize("finite", [False, True])
def test_noise_is_centered_with_covariance_sigma1_over_b(finite):
    """ξ = Σ_i w_i ∇ℓ_i − ∇L over 20k draws: mean within 4 SE of 0 and every entry of E ξξᵀ
    within 4 SE of s²Σ₁/B (s² = 1, or (N − B)/(N − 1) with finite_population). The two targets
    differ by 10% here, which is > 8 SE, so the test can tell them apart."""
    n, B = N_POP, B_NGD
    sigma1 = linear_regression(N_POP, D, seed=4).sigma1
    xi = ngd_noise(finite)
    assert ((xi.mean(0)) / (xi.std(0) / math.sqrt(S))).abs().max() < 4.0
    prods = xi[:, :, None] * xi[:, None, :]
    se = prods.std(0) / math.sqrt(S)
    wo_repl = (n - B) / (n - 1)
    target = sigma1 / B * (wo_repl if finite else 1.0)
    other = sigma1 / B * (1.0 if finite else wo_repl)
    assert ((prods.mean(0) - target) / se).abs().max() < 4.0
    assert ((prods.mean(0) - other) / se).abs().max() > 8.0


def test_noise_is_gaussian():
    """Each coordinate of ξ is an exact Gaussian: skewness and excess kurtosis within 4 SE of 0
    (SE sqrt(6/S) and sqrt(24/S)); per-example gradients themselves are far from Gaussian."""
    toy = linear_regression(N_POP, D, seed=4)
    per_ex, grad = toy.per_example, toy.grad
    gen = torch.Generator().manual_seed(7)
    u = ngd_noise(False)
    u = (u - u.mean(0)) / u.std(0)
    skew = u.pow(3).mean(0)
    kurt = u.pow(4).mean(0) - 3.0
    assert skew.abs().max() < 4 * math.sqrt(6 / S)
    assert kurt.abs().max() < 4 * math.sqrt(24 / S)
    # power: SGD noise with the same covariance (batches of B with replacement) fails the check
    idx = torch.randint(N_POP, (S, B_NGD), generator=gen)
    v = per_ex[idx].mean(1) - grad
    v = (v - v.mean(0)) / v.std(0)
    assert v.pow(3).mean(0).abs().max() > 8 * math.sqrt(6 / S)
    assert (v.pow(4).mean(0) - 3.0).abs().max() > 8 * math.sqrt(24 / S)


def test_weighted_gradient_invariant_to_chunking():
    n, d = 103, 4
    per_ex = linear_regression(n, d, seed=8).per_example
    w = ngd_weights(n, 8, generator=torch.Generator().manual_seed(9))
    full = w @ per_ex
    for chunk in (1, 7, 50, 103, 1000):
        acc = torch.zeros(d, dtype=DT)
        for sl in split_chunks(n, chunk):
            acc += w[sl] @ per_ex[sl]
        assert torch.allclose(acc, full, rtol=1e-13, atol=1e-14)


def test_split_chunks():
    assert split_chunks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert split_chunks(8, 4) == [slice(0, 4), slice(4, 8)]
    assert split_chunks(3, 10) == [slice(0, 3)]
    assert split_chunks(0, 3) == []
    with pytest.raises(ValueError, match="chunk_size"):
        split_chunks(10, 0)
    with pytest.raises(ValueError, match="n must be"):
        split_chunks(-1, 3)


def test_gd_weights_give_mean_gradient():
    n, d = 37, 3
    toy = linear_regression(n, d, seed=10)
    per_ex, grad = toy.per_example, toy.grad
    w = gd_weights(n)
    assert w.shape == (n,) and abs(float(w.sum()) - 1.0) < 1e-12
    assert torch.allclose(w @ per_ex, grad, rtol=1e-13, atol=1e-15)
    assert gd_weights(4, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((1, 1), {}, "n must be"),
        ((10, 0), {}, "batch_size"),
        ((10, 2.5), {}, "batch_size"),
        ((10, 11), {"finite_population": True}, "batch_size"),
        ((10, 2), {"dtype": torch.int32}, "dtype"),
    ],
)
def test_ngd_weights_reject_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ngd_weights(*args, **kwargs)


def test_batch_larger_than_n_allowed_without_finite_population():
    w = ngd_weights(4, 100, generator=torch.Generator().manual_seed(0))
    assert w.shape == (4,) and abs(float(w.sum()) - 1.0) < 1e-12
    with pytest.raises(ValueError, match="n must be"):
        gd_weights(0)
