"""SVAG (eq. 5): coefficients, example weights, and the moments of Lemma 4.7 on a linear toy."""

import itertools
import math

import pytest
import torch

from paperlib.svag import svag_coefficients, svag_example_weights, svag_lr, svag_steps

from problems import DT, linear_regression


@pytest.mark.parametrize("l", [1, 1.5, 2, 8, 32])
def test_coefficients_moments(l):
    c1, c2 = svag_coefficients(l)
    assert c1 + c2 == pytest.approx(1.0, abs=1e-12)
    assert c1**2 + c2**2 == pytest.approx(l, rel=1e-12)
    assert c1 >= 1.0 >= 0.0 >= c2


def test_l_one_is_sgd():
    assert svag_coefficients(1) == (1.0, 0.0)
    w = svag_example_weights(1, 4, dtype=DT)
    assert torch.equal(w, torch.tensor([0.25] * 4 + [0.0] * 4, dtype=DT))


@pytest.mark.parametrize("bad", [0.999, 0, -2, float("nan"), float("inf"), "x", None])
def test_coefficients_reject_bad_l(bad):
    with pytest.raises(ValueError, match="l must be"):
        svag_coefficients(bad)


def test_example_weights_layout_and_sum():
    c1, c2 = svag_coefficients(8)
    w = svag_example_weights(8, 5, dtype=DT)
    assert w.shape == (10,) and w.dtype == DT
    assert torch.allclose(w[:5], torch.full((5,), c1 / 5, dtype=DT), rtol=0, atol=1e-15)
    assert torch.allclose(w[5:], torch.full((5,), c2 / 5, dtype=DT), rtol=0, atol=1e-15)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    # Σ_i w_i ℓ_i = c1 L_γ1 + c2 L_γ2 for arbitrary losses.
    losses = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=DT)
    expect = c1 * losses[:5].mean() + c2 * losses[5:].mean()
    assert float(w @ losses) == pytest.approx(float(expect), abs=1e-12)
    assert svag_example_weights(2, 3).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [dict(l=2, batch_size=0), dict(l=2, batch_size=2.0), dict(l=0.5, batch_size=2),
     dict(l=2, batch_size=2, dtype=torch.int64)],
)
def test_example_weights_reject_bad_input(kwargs):
    with pytest.raises(ValueError):
        svag_example_weights(**kwargs)


def test_lr_and_steps():
    assert svag_lr(0.8, 4) == pytest.approx(0.2)
    assert svag_steps(1000, 4) == 4000
    assert svag_steps(10, 1.5) == 15
    assert svag_steps(0, 3) == 0
    with pytest.raises(ValueError, match="integer"):
        svag_steps(3, 1.5)
    with pytest.raises(ValueError, match="steps"):
        svag_steps(-1, 2)
    with pytest.raises(ValueError, match="lr"):
        svag_lr(0.0, 2)
    with pytest.raises(ValueError, match="l must be"):
        svag_lr(0.1, 0.5)


def _sym3(mu, sigma):
    """3·sym(μ ⊗ Σ) for symmetric Σ: μ_iΣ_jk + μ_jΣ_ik + μ_kΣ_ij."""
    return (
        torch.einsum("i,jk->ijk", mu, sigma)
        + torch.einsum("j,ik->ijk", mu, sigma)
        + torch.einsum("k,ij->ijk", mu, sigma)
    )


@pytest.mark.parametrize("l", [1, 1.5, 2, 8, 32])
def test_lemma_4_7_exact_by_enumeration(l):
    """E over ALL pairs of with-replacement batches (n^B each, equally likely) of the update
    Δ = −(η/l)·Σ_i w_i ∇ℓ_i, built from svag_example_weights, equals Lemma 4.7 exactly:
    (i) −(η/l)∇L, (ii) (η²/l)Σ_B + (η²/l²)∇L∇Lᵀ with Σ_B = Σ₁/B, and (iii)
    −(η³/l³)[(3l − 1)/2 Λ_B + 3l·sym(∇L⊗Σ_B) + ∇L^{⊗3}] with Λ_B = Λ₁/B² (= O(l⁻²))."""
    n, d, B, eta = 5, 2, 2, 0.7
    toy = linear_regression(n, d, seed=1)
    per_ex, grad, sigma1, lam1 = toy.per_example, toy.grad, toy.sigma1, toy.lambda1
    batches = torch.tensor(list(itertools.product(range(n), repeat=B)))  # [n^B, B]
    pairs = torch.cat(
        [batches.repeat_interleave(len(batches), 0), batches.repeat(len(batches), 1)], dim=1
    )  # [n^2B, 2B]: (γ1, γ2) over all ordered pairs
    w = svag_example_weights(l, B, dtype=DT)
    delta = -(eta / l) * torch.einsum("k,pkd->pd", w, per_ex[pairs])
    sigma_b, lam_b = sigma1 / B, lam1 / B**2

    mean = delta.mean(0)
    second = torch.einsum("pi,pj->ij", delta, delta) / len(delta)
    third = torch.einsum("pi,pj,pk->ijk", delta, delta, delta) / len(delta)

    assert torch.allclose(mean, -(eta / l) * grad, rtol=1e-12, atol=1e-14)
    expect2 = eta**2 / l * sigma_b + eta**2 / l**2 * torch.outer(grad, grad)
    assert torch.allclose(second, expect2, rtol=1e-11, atol=1e-14)
    outer3 = torch.einsum("i,j,k->ijk", grad, grad, grad)
    expect3 = -(eta**3 / l**3) * (
        (3 * l - 1) / 2 * lam_b + l * _sym3(grad, sigma_b) + outer3
    )
    assert torch.allclose(third, expect3, rtol=1e-10, atol=1e-14)
    # the leading term of (iii) matches the paper's (η³/l²)(3 − 1/l)/2 Λ up to the sign of Δ
    assert (3 * l - 1) / 2 / l**3 == pytest.approx((3 - 1 / l) / 2 / l**2)


@pytest.mark.parametrize("l", [2.0, 8.0])
def test_lemma_4_7_monte_carlo(l):
    """200k independent SVAG updates from with-replacement batches of a population of 30:
    every entry of the sample mean and second moment is within 4 SE of Lemma 4.7 (i)-(ii); an
    un-amplified update with the same LR (c = (1, 0)) would be > 10 SE off (power check)."""
    n, d, B, eta, S = 30, 3, 4, 0.5, 200_000
    toy = linear_regression(n, d, seed=2)
    per_ex, grad, sigma1 = toy.per_example, toy.grad, toy.sigma1
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(n, (S, 2 * B), generator=gen)
    gathered = per_ex[idx]  # [S, 2B, d]
    w = svag_example_weights(l, B, dtype=DT)
    delta = -(eta / l) * torch.einsum("k,skd->sd", w, gathered)

    mean_se = delta.std(0) / math.sqrt(S)
    z_mean = (delta.mean(0) + eta / l * grad) / mean_se
    assert z_mean.abs().max() < 4.0

    prods = delta[:, :, None] * delta[:, None, :]  # [S, d, d]
    sigma_b = sigma1 / B
    expect2 = eta**2 / l * sigma_b + eta**2 / l**2 * torch.outer(grad, grad)
    se2 = prods.std(0) / math.sqrt(S)
    assert ((prods.mean(0) - expect2) / se2).abs().max() < 4.0

    # power: plain SGD at LR η/l has second moment (η/l)²(Σ_B + ∇L∇Lᵀ), far from (ii).
    sgd = -(eta / l) * gathered[:, :B].mean(1)
    sgd_second = torch.einsum("si,sj->ij", sgd, sgd) / S
    assert ((sgd_second - expect2) / se2).abs().max() > 10.0


@pytest.mark.parametrize("l", [2.0, 8.0])
def test_permutation_slice_covariance_exact(l):
    """With both batches taken as one 2B slice of a random permutation (all ordered 2B-tuples of
    distinct examples, equally likely), E Δ is unchanged and Cov Δ is exactly
    (η/l)² Σ₁ [l(N − B)/(B(N − 1)) + (l − 1)/(N − 1)], as documented in paperlib.svag."""
    n, d, B, eta = 6, 2, 2, 0.9
    toy = linear_regression(n, d, seed=3)
    per_ex, grad, sigma1 = toy.per_example, toy.grad, toy.sigma1
    tuples = torch.tensor(list(itertools.permutations(range(n), 2 * B)))  # [360, 2B]
    w = svag_example_weights(l, B, dtype=DT)
    delta = -(eta / l) * torch.einsum("k,pkd->pd", w, per_ex[tuples])
    mean = delta.mean(0)
    cov = torch.einsum("pi,pj->ij", delta - mean, delta - mean) / len(delta)
    assert torch.allclose(mean, -(eta / l) * grad, rtol=1e-12, atol=1e-14)
    factor = l * (n - B) / (B * (n - 1)) + (l - 1) / (n - 1)
    assert torch.allclose(cov, (eta / l) ** 2 * sigma1 * factor, rtol=1e-11, atol=1e-14)
