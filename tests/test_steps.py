"""The public step API (paperlib.sgd_step / svag_step / ngd_step / gd_step, Sampling, set_grad,
SVAGSchedule, stretch_schedule) on small torch models built here, checked against exact
per-example gradients computed here by plain autograd (one backward per example).

Thresholds: exact identities are checked either bitwise (torch.equal) or to float64 rounding,
with a tolerance of 1e-12 relative to the scale of the quantity (a float64 forward/backward of
these nets is accurate to ~1e-15 relative, and every alternative the test rules out is
asserted, next to the check, to differ by more than 1e6 times that tolerance). Statistical
checks use z-scores from the sample standard error: |z| < Z_OK = 4.5 (a two-sided 6.8e-6
tail: ~1e-4 family-wise over the < 20 such checks of this file; covariance entries use a
Bonferroni threshold instead), and a power check that the wrong formula/scheme lands at
|z| > Z_POWER = 2 * Z_OK.
"""

import copy
import itertools
import math
from statistics import NormalDist

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import paperlib
from paperlib import (
    Sampling,
    StepStats,
    SVAGSchedule,
    gd_step,
    ngd_step,
    set_grad,
    sgd_step,
    stretch_schedule,
    svag_lr,
    svag_step,
)
from paperlib.sampling import batch_coupled
from paperlib.svag import svag_coefficients

from problems import seeded, tanh_mlp

DT = torch.float64
CE = nn.CrossEntropyLoss(reduction="none")
Z_OK = 4.5
Z_POWER = 2 * Z_OK
REL = 1e-12  # float64 identities: tolerance relative to the quantity's scale


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example squared error [b] for [b, k] outputs."""
    return (out - target).square().sum(1)


# --- models and exact references ------------------------------------------------------------

def mlp(seed: int = 0, hidden: int = 4) -> nn.Module:
    return seeded(lambda: tanh_mlp(3, hidden, 3), seed).double()


def gn_net(seed: int = 0) -> nn.Module:
    return seeded(lambda: tanh_mlp(3, 8, 3, norm="gn"), seed).double()


def bn_net(seed: int = 0) -> nn.Module:
    """Train-mode BatchNorm: every example's loss depends on the whole batch."""
    return seeded(lambda: tanh_mlp(3, 4, 3, norm="bn"), seed).double().train()


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=DT), torch.randint(3, (n,), generator=gen)


def flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def batch_grad(model, x, y) -> torch.Tensor:
    """∇L_γ: gradient of the mean loss of one batch, one forward pass."""
    return flat_grad(model, CE(model(x), y).mean())


def per_example(model, x, y) -> torch.Tensor:
    """[n, d] per-example gradients a_i = ∇ℓ_i, one backward per example (no batch coupling)."""
    return torch.stack([batch_grad(model, x[i:i + 1], y[i:i + 1]) for i in range(len(y))])


def moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∇L = mean_i a_i and Σ₁ = (1/n) Σ_i (a_i − ∇L)(a_i − ∇L)ᵀ (1/n-normalized)."""
    grad = a.mean(0)
    c = a - grad
    return grad, c.T @ c / len(a)


def close(actual: torch.Tensor, expect: torch.Tensor, scale: float) -> bool:
    return bool((actual - expect).abs().max() <= REL * scale)


def z_score(samples: torch.Tensor, truth: float) -> float:
    return float((samples.mean() - truth) / (samples.std() / math.sqrt(samples.numel())))


def bonferroni(m: int, alpha: float = 1e-3) -> float:
    """|z| threshold whose two-sided tail, summed over m tests, is alpha."""
    return NormalDist().inv_cdf(1 - alpha / (2 * m))


# --- 1. SVAG at l = 1 is SGD ------------------------------------------------------------------

def test_svag_l1_two_pass_and_coupled_paths_are_sgd_bitwise():
    """With measure=True (two passes of B) or a train-mode BN net, svag_step(l=1) returns
    1.0·∇L_γ1 + 0.0·∇L_γ2 with ∇L_γ1 formed exactly as sgd_step forms it: bitwise equal."""
    x, y = data(10, seed=1)
    for model, kw in ((mlp(), dict(measure=True, sampling=Sampling.shuffled(10))),
                      (bn_net(), dict(sampling=Sampling.independent(10))),
                      (bn_net(), {})):
        for B in (2, 3, 5):
            sv = svag_step(model, CE, x[:2 * B], y[:2 * B], l=1, **kw)
            sg = sgd_step(model, CE, x[:B], y[:B])
            assert torch.equal(sv.grad, sg.grad)
            assert sv.count == 2 * B and sg.count == B
            # measured iff sampling is given (a coupled net needs no measure=True for it)
            assert (sv.G is not None) == ("sampling" in kw)


def test_svag_l1_fused_pass_is_sgd_up_to_gemm_rounding():
    """The fused pass (no measurement, no coupling) weights γ1 by c1/B = 1/B and γ2 by exactly 0.

    Strongest true statements (bitwise equality with sgd_step is NOT one of them): the forward
    of γ1 runs inside a batch of 2B rows, and the CPU GEMM kernels block (hence round) by the
    row count, so the logits of γ1 already differ from a B-row pass in the last bit (observed:
    ~1 ulp, ~5e-17 absolute, for B in {1, 2, 3, 4, 6} with float64). So: (a) γ2 contributes
    exactly nothing — the result is bitwise independent of γ2's values; (b) it equals sgd_step
    on γ1 to float64 rounding; (c) that tolerance is far below the nearest wrong answer (the
    mean over all 2B examples)."""
    model = mlp()
    x, y = data(12, seed=2)
    other_x = 100.0 * torch.randn(12, 3, generator=torch.Generator().manual_seed(9), dtype=DT)
    other_y = (y + 1) % 3
    for B in (1, 2, 3, 4, 6):
        fused = svag_step(model, CE, x[:2 * B], y[:2 * B], l=1).grad
        swapped = svag_step(model, CE, torch.cat([x[:B], other_x[:B]]),
                            torch.cat([y[:B], other_y[:B]]), l=1).grad
        assert torch.equal(fused, swapped)  # (a)
        sgd = sgd_step(model, CE, x[:B], y[:B]).grad
        scale = float(sgd.abs().max())
        assert close(fused, sgd, scale)  # (b)
        wrong = sgd_step(model, CE, x[:2 * B], y[:2 * B]).grad
        assert (wrong - sgd).abs().max() > 1e6 * REL * scale  # (c)


def _train(model, steps, l, lr, fused, milestones=(2, 4)):
    """k steps of SVAG(l) (SVAGSchedule over MultiStepLR, LR svag_lr) or of SGD (l=None) on
    batches of 3 (SVAG: [γ1; γ2], γ1 the SGD batch) with momentum and weight decay."""
    x, y = data(40, seed=3)
    base = 1 if l is None else l
    opt = torch.optim.SGD(model.parameters(), lr=svag_lr(lr, base), momentum=0.9,
                          weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.5)
    if l is not None:
        sched = SVAGSchedule(sched, l)
    for k in range(steps):
        b1 = slice(6 * k % 36, 6 * k % 36 + 3)
        b2 = slice(b1.stop, b1.stop + 3)
        if l is None:
            stats = sgd_step(model, CE, x[b1], y[b1])
        else:
            xs, ys = torch.cat([x[b1], x[b2]]), torch.cat([y[b1], y[b2]])
            kw = {} if fused else dict(measure=True, sampling=Sampling.shuffled(40))
            stats = svag_step(model, CE, xs, ys, l=l, **kw)
        opt.zero_grad()
        set_grad(model, stats.grad)
        opt.step()
        sched.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_svag_l1_training_is_sgd():
    """8 steps through MultiStepLR milestones: SVAG l=1 via SVAGSchedule/svag_lr is bitwise SGD
    on the two-pass path (and on a BN net); on the fused path equal to rounding."""
    sgd = _train(mlp(), 8, None, 0.3, fused=False)
    assert torch.equal(_train(mlp(), 8, 1, 0.3, fused=False), sgd)
    assert torch.equal(_train(bn_net(), 8, 1, 0.3, fused=True), _train(bn_net(), 8, None, 0.3,
                                                                         fused=False))
    fused = _train(mlp(), 8, 1, 0.3, fused=True)
    assert close(fused, sgd, float(sgd.abs().max()))
    # power: the trajectory moved, and l=2 (same continuous time would need 16 steps) differs
    start = torch.cat([p.detach().reshape(-1) for p in mlp().parameters()])
    assert (sgd - start).abs().max() > 1e-3
    assert (_train(mlp(), 8, 2, 0.3, fused=True) - sgd).abs().max() > 1e-4


# --- 2. Lemma 4.7 (i)-(ii) by exact enumeration ---------------------------------------------

N_ENUM, B_ENUM, ETA = 6, 2, 0.7


def _enumerate(scheme: str) -> list[tuple[int, ...]]:
    """All equally likely index tuples [γ1; γ2] (2B entries) of a scheme on N_ENUM examples."""
    n, B = N_ENUM, B_ENUM
    if scheme == "with_replacement":  # each of the 2B draws uniform and independent
        return list(itertools.product(range(n), repeat=2 * B))
    if scheme == "independent_draws":  # each batch an ordered draw of B distinct examples
        batches = list(itertools.permutations(range(n), B))
        return [a + b for a, b in itertools.product(batches, batches)]
    return list(itertools.permutations(range(n), 2 * B))  # one 2B slice of a permutation


@pytest.fixture(scope="module")
def enum_setup():
    model = mlp(seed=4)
    x, y = data(N_ENUM, seed=5)
    grad, sigma1 = moments(per_example(model, x, y))
    return model, x, y, grad, sigma1


@pytest.mark.parametrize("scheme", ["with_replacement", "independent_draws",
                                    "without_replacement"])
@pytest.mark.parametrize("l", [1, 2, 4.5, 16])
def test_svag_update_moments_exact(enum_setup, scheme, l):
    """E Δ and E ΔΔᵀ of Δ = −(η/l)·svag_step(...).grad over ALL draws of the scheme.

    Lemma 4.7: E Δ = −(η/l)∇L, E ΔΔᵀ = (η²/l)Σ_B + (η²/l²)∇L∇Lᵀ, for independent γ1, γ2, with
    Σ_B = Σ₁/B (with replacement) or Σ₁/B·(n − B)/(n − 1) (each batch without replacement).
    For γ1, γ2 disjoint halves of one permutation slice, Cov(g1, g2) = −Σ₁/(n − 1) adds
    2c1c2·(−Σ₁/(n − 1)) = (l − 1)Σ₁/(n − 1) to Cov(c1g1 + c2g2), so
    E ΔΔᵀ = (η/l)²[Σ₁(l(n − B)/(B(n − 1)) + (l − 1)/(n − 1)) + ∇L∇Lᵀ] (paperlib.svag)."""
    model, x, y, grad, sigma1 = enum_setup
    n, B = N_ENUM, B_ENUM
    idx = torch.tensor(_enumerate(scheme))
    lr = svag_lr(ETA, l)
    deltas = torch.stack([-lr * svag_step(model, CE, x[i], y[i], l=l).grad for i in idx])
    mean = deltas.mean(0)
    second = deltas.T @ deltas / len(deltas)

    wo = (n - B) / (n - 1)
    sigma_b = sigma1 / B * (1.0 if scheme == "with_replacement" else wo)
    lemma = ETA**2 / l * sigma_b + ETA**2 / l**2 * torch.outer(grad, grad)
    if scheme == "without_replacement":
        expect = lr**2 * (sigma1 * (l * (n - B) / (B * (n - 1)) + (l - 1) / (n - 1))
                          + torch.outer(grad, grad))
    else:
        expect = lemma
    scale1 = float(deltas.abs().max())
    scale2 = scale1**2
    assert close(mean, -lr * grad, scale1)
    assert close(second, expect, scale2)
    # power: the nearest wrong answers (Lemma 4.7 with the other Σ_B, or uncorrected for the
    # disjoint halves) are far outside the tolerance. Exception: for disjoint halves the
    # bracket l(n − B)/(B(n − 1)) + (l − 1)/(n − 1) equals l/B exactly when l = B, so at l = 2
    # the permutation-slice moments coincide with the with-replacement Lemma 4.7.
    wrong = {"with_replacement": [wo], "independent_draws": [1.0],
             "without_replacement": [wo] * (l > 1) + [1.0] * (l != B)}[scheme]
    for factor in wrong:
        other = ETA**2 / l * sigma1 / B * factor + ETA**2 / l**2 * torch.outer(grad, grad)
        assert (second - other).abs().max() > 1e6 * REL * scale2
    unamplified = lr**2 * (sigma_b + torch.outer(grad, grad))  # plain SGD at LR η/l
    if l > 1:
        assert (second - unamplified).abs().max() > 1e6 * REL * scale2


# --- 3. fused one-pass SVAG vs two passes ------------------------------------------------------

@pytest.mark.parametrize("make", [mlp, gn_net])
@pytest.mark.parametrize("l", [1.5, 4, 16])
def test_fused_equals_two_pass(make, l):
    model = make()
    x, y = data(10, seed=6)
    c1, c2 = svag_coefficients(l)
    fused = svag_step(model, CE, x, y, l=l)
    two = svag_step(model, CE, x, y, l=l, measure=True, sampling=Sampling.independent(10))
    hand = c1 * batch_grad(model, x[:5], y[:5]) + c2 * batch_grad(model, x[5:], y[5:])
    scale = float(hand.abs().max())
    assert fused.G is None and fused.N is None and two.G is not None
    assert close(fused.grad, hand, scale) and close(two.grad, hand, scale)
    assert fused.count == two.count == 10
    assert torch.allclose(fused.loss_sum, CE(model(x), y).sum(), rtol=1e-14, atol=0)
    # power: the unweighted mean over the 2B examples is far off
    assert (fused.grad - batch_grad(model, x, y)).abs().max() > 1e6 * REL * scale


@pytest.mark.parametrize("l", [1.5, 4, 16])
def test_batchnorm_svag_takes_two_passes(l):
    """Train-mode BN: svag_step = c1·∇L_γ1 + c2·∇L_γ2 with per-batch statistics (each batch
    its own forward pass), not the fused 2B pass whose statistics mix the two batches."""
    model = bn_net()
    assert batch_coupled(model) and not batch_coupled(copy.deepcopy(model).eval())
    x, y = data(8, seed=7)
    c1, c2 = svag_coefficients(l)
    ref = copy.deepcopy(model)
    stats = svag_step(model, CE, x, y, l=l)
    hand = c1 * batch_grad(ref, x[:4], y[:4]) + c2 * batch_grad(ref, x[4:], y[4:])
    scale = float(hand.abs().max())
    assert close(stats.grad, hand, scale)
    w = torch.tensor([c1 / 4] * 4 + [c2 / 4] * 4, dtype=DT)
    one_pass = flat_grad(ref, (w * CE(ref(x), y)).sum())
    assert (one_pass - hand).abs().max() > 1e6 * REL * scale
    assert stats.G is None  # no sampling given: not measured


# --- 4. NGD and GD -------------------------------------------------------------------------------

N_NGD, B_NGD, S_NGD = 10, 6, 1000


@pytest.fixture(scope="module")
def ngd_setup():
    model = mlp(seed=8, hidden=3)
    x, y = data(N_NGD, seed=9)
    grad, sigma1 = moments(per_example(model, x, y))
    noise = {}
    for finite in (False, True):
        noise[finite] = torch.stack([
            ngd_step(model, CE, (x, y), batch_size=B_NGD, finite_population=finite,
                     generator=torch.Generator().manual_seed(10**6 * finite + s)).grad - grad
            for s in range(S_NGD)])
    return model, x, y, grad, sigma1, noise


@pytest.mark.parametrize("finite", [False, True])
def test_ngd_noise_mean_and_covariance(ngd_setup, finite):
    """ξ = ngd_step(...).grad − ∇L over 1000 generator seeds: every coordinate's mean within a
    Bonferroni z of 0, every entry of the second moment within a Bonferroni z of Σ₁/B (times
    (n − B)/(n − 1) = 4/9 with finite_population) — and the other target is > Z_POWER off."""
    _, _, _, _, sigma1, noise = ngd_setup
    xi = noise[finite]
    d = xi.shape[1]
    z_mean = xi.mean(0) / (xi.std(0) / math.sqrt(S_NGD))
    assert z_mean.abs().max() < bonferroni(d)
    prods = (xi[:, :, None] * xi[:, None, :]).reshape(S_NGD, -1)
    se = prods.std(0) / math.sqrt(S_NGD)
    wo = (N_NGD - B_NGD) / (N_NGD - 1)
    target = (sigma1 / B_NGD * (wo if finite else 1.0)).reshape(-1)
    other = (sigma1 / B_NGD * (1.0 if finite else wo)).reshape(-1)
    assert ((prods.mean(0) - target) / se).abs().max() < bonferroni(d * (d + 1) // 2)
    assert ((prods.mean(0) - other) / se).abs().max() > Z_POWER


def test_gd_step_is_full_gradient(ngd_setup):
    model, x, y, grad, _, _ = ngd_setup
    stats = gd_step(model, CE, (x, y), chunk_size=3)
    scale = float(grad.abs().max())
    assert close(stats.grad, grad, scale)
    assert stats.G == stats.grad.double().square().sum()
    assert float(stats.G) == pytest.approx(float(grad.square().sum()), rel=1e-12)
    assert stats.N is not None and float(stats.N) == 0.0
    assert stats.count == N_NGD and stats.correct is not None
    assert float(stats.loss_sum) == pytest.approx(float(CE(model(x), y).detach().sum()), rel=1e-13)


def test_ngd_accepts_a_loader_and_refuses_coupling_and_dropped_examples(ngd_setup):
    model, x, y, _, _, _ = ngd_setup
    ds = TensorDataset(x, y)

    def gen():
        return torch.Generator().manual_seed(7)

    ref = ngd_step(model, CE, (x, y), batch_size=B_NGD, generator=gen()).grad
    loader = DataLoader(ds, batch_size=4, shuffle=False, drop_last=False)
    via_loader = ngd_step(model, CE, loader, batch_size=B_NGD, generator=gen()).grad
    assert close(via_loader, ref, float(ref.abs().max()))
    assert close(gd_step(model, CE, loader).grad, gd_step(model, CE, (x, y)).grad,
                 float(ref.abs().max()))
    with pytest.raises(ValueError, match="drop_last"):
        ngd_step(model, CE, DataLoader(ds, batch_size=4, drop_last=True), batch_size=B_NGD)
    with pytest.raises(ValueError, match="BatchNorm"):
        ngd_step(bn_net(), CE, (x, y), batch_size=B_NGD)
    with pytest.raises(ValueError, match="BatchNorm"):
        gd_step(bn_net(), CE, (x, y))
    ngd_step(bn_net().eval(), CE, (x, y), batch_size=B_NGD)  # eval-mode BN: no coupling


# --- 5. G/N unbiased for each sampling scheme ------------------------------------------------

N_POP, S_GN = 8, 600
SCHEMES = {"shuffled": Sampling.shuffled(N_POP), "independent": Sampling.independent(N_POP),
           "with_replacement": Sampling.with_replacement()}


def _draw(scheme: str, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Index sets of the step's batch and of its partner batch, drawn as the scheme says."""
    if scheme == "shuffled":  # consecutive slices of one permutation
        perm = torch.randperm(N_POP, generator=gen)
        return perm[:B], perm[B:2 * B]
    if scheme == "independent":  # two independent without-replacement draws
        return (torch.randperm(N_POP, generator=gen)[:B],
                torch.randperm(N_POP, generator=gen)[:B])
    return torch.randint(N_POP, (B,), generator=gen), torch.randint(N_POP, (B,), generator=gen)


def _exact_gn(kind: str, model, x, y, B: int) -> dict[str, tuple[float, float]]:
    """Exact (G, N = Tr Cov g_γ) of one batch-B gradient per scheme.

    No coupling: G = |∇L|², N = Tr Σ₁/B (with replacement) or Tr Σ₁/B·(n − B)/(n − 1) (a batch
    drawn without replacement, as under both "shuffled" and "independent").
    Train-mode BN: no per-example gradients exist; G = |E g_γ|² and N = E|g_γ − E g_γ|² over
    all equally likely batches (B-subsets, or ordered B-tuples with replacement)."""
    if kind != "bn":
        grad, sigma1 = moments(per_example(model, x, y))
        tr1 = float(sigma1.trace())
        g = float(grad.square().sum())
        wo = tr1 / B * (N_POP - B) / (N_POP - 1)
        return {"shuffled": (g, wo), "independent": (g, wo), "with_replacement": (g, tr1 / B)}
    out = {}
    for name, batches in (("wo", itertools.combinations(range(N_POP), B)),
                          ("with", itertools.product(range(N_POP), repeat=B))):
        gs = torch.stack([batch_grad(model, x[list(b)], y[list(b)]) for b in batches])
        mu = gs.mean(0)
        out[name] = (float(mu.square().sum()), float((gs - mu).square().sum(1).mean()))
    return {"shuffled": out["wo"], "independent": out["wo"], "with_replacement": out["with"]}


def _step(kind: str, model, x, y, i1, i2, sampling) -> StepStats:
    if kind == "sgd":  # one batch; G/N from its two disjoint halves
        return sgd_step(model, CE, x[i1], y[i1], measure=True, sampling=sampling)
    if kind == "svag":  # [γ1; γ2], two passes when measuring
        idx = torch.cat([i1, i2])
        return svag_step(model, CE, x[idx], y[idx], l=4, measure=True, sampling=sampling)
    return sgd_step(model, CE, x[i1], y[i1], measure=True, sampling=sampling,
                    extra=(x[i2], y[i2]))


# For each step kind: batch size, and which wrong scheme gives a DIFFERENT estimator on the same
# draws (the power check). sgd's halves are disjoint parts of one batch, so "shuffled" and
# "independent" name the same estimator there; for a pair of batches (svag, the BN extra batch)
# "independent" and "with_replacement" both reduce to Ĝ = ⟨g1, g2⟩, N̂ = |g1 − g2|²/2 (an iid
# pair), so the detectable wrong scheme is the one that treats the pair differently.
def test_measuring_does_not_change_the_sgd_step():
    """measure=True returns the gradient of the WHOLE batch (odd B: the halves plus the leftover
    example), to float64 rounding; on a BN net the extra batch changes neither the gradient
    (bitwise) nor the running statistics."""
    model = mlp()
    x, y = data(8, seed=15)
    for B in range(2, 9):
        one = sgd_step(model, CE, x[:B], y[:B])
        two = sgd_step(model, CE, x[:B], y[:B], measure=True, sampling=Sampling.shuffled(8))
        scale = float(one.grad.abs().max())
        assert close(two.grad, one.grad, scale)
        assert two.count == B and torch.equal(two.correct, one.correct)
        assert float(two.loss_sum) == pytest.approx(float(one.loss_sum), rel=1e-14)
        halves = batch_grad(model, x[:B // 2 * 2], y[:B // 2 * 2])
        if B % 2:  # power: the two halves alone are not the step's gradient
            assert (halves - one.grad).abs().max() > 1e6 * REL * scale
    bn, ref = bn_net(), bn_net()
    measured = sgd_step(bn, CE, x[:3], y[:3], measure=True, sampling=Sampling.independent(8),
                        extra=(x[3:6], y[3:6]))
    plain = sgd_step(ref, CE, x[:3], y[:3])
    assert torch.equal(measured.grad, plain.grad)
    for a, b in zip(bn.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sgd_step(ref, CE, x[3:6], y[3:6])  # power: a pass over the extra batch does move them
    assert not torch.equal(bn[1].running_mean, ref[1].running_mean)


KINDS = {"sgd": 5, "svag": 3, "bn": 3}
WRONG = {
    ("sgd", "shuffled"): "with_replacement", ("sgd", "independent"): "with_replacement",
    ("sgd", "with_replacement"): "shuffled",
    ("svag", "shuffled"): "independent", ("svag", "independent"): "shuffled",
    ("svag", "with_replacement"): "shuffled",
    ("bn", "shuffled"): "independent", ("bn", "independent"): "shuffled",
    ("bn", "with_replacement"): "shuffled",
}
SAME = {("sgd", "shuffled"): "independent", ("sgd", "independent"): "shuffled",
        ("svag", "independent"): "with_replacement", ("svag", "with_replacement"): "independent",
        ("bn", "independent"): "with_replacement", ("bn", "with_replacement"): "independent"}

class Biased(AssertionError):
    """The right scheme's mean estimate is more than Z_OK standard errors off the truth."""


BN_DISJOINT_BIAS = (
    "known limitation: with train-mode BatchNorm g_γ is not a mean of fixed per-example "
    "gradients, so the disjoint-pair correction (Cov(g1, g2) = −Σ₁/(n − 1), exact for linear "
    "statistics) does not hold; for this net, n = 8, B = 3, exact enumeration of all disjoint "
    "pairs gives E Ĝ = 1.91 G, E N̂ = 0.80 N. The bias is O(B/n); paperlib.train draws the "
    "BN extra batch of SGD independently (but SVAG's two BN batches come from its sampler).")


@pytest.mark.parametrize("kind, scheme", [
    pytest.param(k, s, marks=pytest.mark.xfail(raises=Biased, strict=True,
                                                  reason=BN_DISJOINT_BIAS)
                 if (k, s) == ("bn", "shuffled") else ())
    for k in KINDS for s in SCHEMES])
def test_online_gn_unbiased_per_scheme(kind, scheme):
    """600 steps at a fixed point, batches drawn exactly as the scheme says: mean Ĝ and N̂
    within Z_OK standard errors of the exact G and N = Tr Σ_B; the wrong scheme's estimator on
    the same draws is off by > Z_POWER standard errors (in G or N)."""
    model = bn_net(seed=10) if kind == "bn" else mlp(seed=10)
    x, y = data(N_POP, seed=11)
    B = KINDS[kind]
    truth = _exact_gn(kind, model, x, y, B)[scheme]
    gen = torch.Generator().manual_seed(12)
    right, wrong = [], []
    for s in range(S_GN):
        i1, i2 = _draw(scheme, B, gen)
        st = _step(kind, model, x, y, i1, i2, SCHEMES[scheme])
        right.append((st.G, st.N))
        wt = _step(kind, model, x, y, i1, i2, SCHEMES[WRONG[kind, scheme]])
        assert torch.equal(wt.grad, st.grad)  # the scheme changes the estimate only
        wrong.append((wt.G, wt.N))
        if s < 5 and (kind, scheme) in SAME:  # the same estimator under another name
            same = _step(kind, model, x, y, i1, i2, SCHEMES[SAME[kind, scheme]])
            assert torch.allclose(same.G, st.G, rtol=1e-12, atol=0)
            assert torch.allclose(same.N, st.N, rtol=1e-12, atol=0)
    right, wrong = torch.tensor(right), torch.tensor(wrong)
    z_wrong = [abs(z_score(wrong[:, j], truth[j])) for j in (0, 1)]
    assert max(z_wrong) > Z_POWER, z_wrong
    z_right = [z_score(right[:, j], truth[j]) for j in (0, 1)]
    if max(map(abs, z_right)) >= Z_OK:
        raise Biased(f"z(G), z(N) = {z_right}")


# --- 6. validation, set_grad, schedules -------------------------------------------------------

def test_loss_must_be_per_example():
    model = mlp()
    x, y = data(4, seed=13)
    for call in (lambda f: sgd_step(model, f, x, y), lambda f: svag_step(model, f, x, y, l=2),
                 lambda f: ngd_step(model, f, (x, y), batch_size=2),
                 lambda f: gd_step(model, f, (x, y))):
        with pytest.raises(ValueError, match=r"shape \[4\].*got shape \(\)"):
            call(nn.CrossEntropyLoss())
    target = torch.zeros(4, 3, dtype=DT)
    with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
        sgd_step(model, nn.MSELoss(reduction="none"), x, target)
    stats = sgd_step(model, mse, x, target)  # a per-example MSE works; no accuracy for it
    assert stats.correct is None and stats.accuracy is None
    assert float(stats.loss) == pytest.approx(float(mse(model(x), target).detach().mean()),
                                              rel=1e-14)


def test_measure_and_batch_validation():
    model = mlp()
    x, y = data(6, seed=14)
    with pytest.raises(ValueError, match="needs sampling"):
        sgd_step(model, CE, x, y, measure=True)
    with pytest.raises(ValueError, match="needs sampling"):
        svag_step(model, CE, x, y, l=2, measure=True)
    with pytest.raises(ValueError, match="needs sampling"):
        sgd_step(model, CE, x, y, measure=True, sampling="with_replacement")
    with pytest.raises(ValueError, match="B >= 2"):
        sgd_step(model, CE, x[:1], y[:1], measure=True, sampling=Sampling.with_replacement())
    with pytest.raises(ValueError, match="odd count 5"):
        svag_step(model, CE, x[:5], y[:5], l=2)
    with pytest.raises(ValueError, match="same non-zero length"):
        sgd_step(model, CE, x, y[:4])
    with pytest.raises(ValueError, match="l must be"):
        svag_step(model, CE, x, y, l=0.5)
    bn = bn_net()
    with pytest.raises(ValueError, match="extra"):
        sgd_step(bn, CE, x[:3], y[:3], measure=True, sampling=Sampling.independent(6))
    with pytest.raises(ValueError, match="batch size B=3"):
        sgd_step(bn, CE, x[:3], y[:3], measure=True, sampling=Sampling.independent(6),
                 extra=(x[:2], y[:2]))


def test_sampling_validation():
    assert Sampling.shuffled(10) == Sampling("without_replacement", 10)
    assert Sampling.independent(10).population == 10 and not Sampling.independent(10).disjoint
    assert Sampling.shuffled(10).disjoint and Sampling.with_replacement().population is None
    with pytest.raises(ValueError, match="not allowed; choose one of"):
        Sampling("bogus", 10)
    for scheme in ("without_replacement", "independent_draws"):
        for bad in (None, 1, True, 10.0):
            with pytest.raises(ValueError, match="needs the data set size"):
                Sampling(scheme, bad)
    with pytest.raises(ValueError, match="leave it None"):
        Sampling("with_replacement", 10)
    with pytest.raises(ValueError, match=r"n=0 is not allowed; Sampling.shuffled\(n\)"):
        Sampling.shuffled(0)  # names what the user called
    with pytest.raises(ValueError, match=r"Sampling.independent\(n\)"):
        Sampling.independent(1)


def test_set_grad():
    model = mlp()
    d = sum(p.numel() for p in model.parameters())
    g = torch.arange(d, dtype=DT)
    set_grad(model, g)
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), g)
    g.zero_()  # p.grad holds copies
    assert float(list(model.parameters())[-1].grad[-1]) == d - 1
    params = list(model.parameters())[:2]
    set_grad(params, torch.ones(params[0].numel() + params[1].numel(), dtype=DT))
    for bad in (torch.zeros(d - 1, dtype=DT), torch.zeros(d + 1, dtype=DT),
                torch.zeros(1, d, dtype=DT)):
        with pytest.raises(ValueError, match=rf"grad must have shape \[{d}\]"):
            set_grad(model, bad)


def _lrs(opt, sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_svag_schedule_stretches_multistep_milestones():
    """SVAGSchedule over MultiStepLR(milestones=[3, 5]) with l = 4: LR of SVAG step k is
    (η/l)·s(⌊k/l⌋), so the decays land at k = 12 and 20 instead of 3 and 5."""
    eta, l, gamma = 0.8, 4, 0.1
    w = nn.Parameter(torch.zeros(1))

    def build(lr):
        opt = torch.optim.SGD([w], lr=lr)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, [3, 5], gamma=gamma)

    base = _lrs(*build(eta), 8)
    opt, inner = build(svag_lr(eta, l))
    wrapped = SVAGSchedule(inner, l)
    lrs = _lrs(opt, wrapped, 32)
    assert lrs == pytest.approx([base[k // l] / l for k in range(32)], rel=1e-12)
    changes = [k for k in range(1, 32) if lrs[k] != lrs[k - 1]]
    assert changes == [12, 20]
    assert wrapped.get_last_lr()[0] == pytest.approx(eta / l * gamma**2)
    # resuming mid-interval from the state dict continues the same staircase
    opt2, inner2 = build(svag_lr(eta, l))
    resumed = SVAGSchedule(inner2, l)
    opt3, inner3 = build(svag_lr(eta, l))
    first = SVAGSchedule(inner3, l)
    _lrs(opt3, first, 10)
    resumed.load_state_dict(first.state_dict())
    opt2.param_groups[0]["lr"] = opt3.param_groups[0]["lr"]
    assert _lrs(opt2, resumed, 22) == pytest.approx(lrs[10:], rel=1e-12)
    for bad_l in (1.5, 0, 0.5):
        with pytest.raises(ValueError):
            SVAGSchedule(inner, bad_l)
    with pytest.raises(ValueError, match="step"):
        SVAGSchedule(object(), 2)


def test_stretch_schedule_maps_k_to_k_over_l():
    def schedule(t):
        return 0.1 ** sum(t >= m for m in (3, 5)) * (1.0 + math.cos(t))

    for l in (1, 2.5, 4):
        f = stretch_schedule(schedule, l)
        for k in range(30):
            assert f(k) == schedule(k / l)
    # with LambdaLR on LR η/l: the step decays at base times 3 and 5 land at k = 7.5 → 8, 13
    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=svag_lr(1.0, 2.5))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, stretch_schedule(lambda t: 0.1 ** sum(t >= m for m in (3, 5)), 2.5))
    lrs = _lrs(opt, sched, 16)
    assert [k for k in range(1, 16) if lrs[k] != lrs[k - 1]] == [8, 13]
    assert lrs[0] == pytest.approx(0.4) and lrs[-1] == pytest.approx(0.004)
    with pytest.raises(ValueError, match="l must be"):
        stretch_schedule(schedule, 0.5)
    with pytest.raises(ValueError, match="callable|function"):
        stretch_schedule(3.0, 2)


def test_public_names():
    for name in ("sgd_step", "svag_step", "ngd_step", "gd_step", "Sampling", "StepStats",
                 "set_grad", "svag_lr", "svag_steps", "stretch_schedule", "SVAGSchedule",
                 "NSRWindow"):
        assert name in paperlib.__all__ and hasattr(paperlib, name)


def test_coupled_net_with_disjoint_batches_warns_and_independent_does_not():
    import warnings

    model = bn_net(seed=10)
    x, y = data(N_POP, seed=11)
    with pytest.warns(UserWarning, match="biased by O\\(B/n\\)"):
        paperlib.sgd_step(model, CE, x[:3], y[:3], measure=True, extra=(x[3:6], y[3:6]),
                          sampling=paperlib.Sampling.shuffled(N_POP))
    with pytest.warns(UserWarning, match="biased by O\\(B/n\\)"):
        paperlib.svag_step(model, CE, x[:6], y[:6], l=4, sampling=paperlib.Sampling.shuffled(N_POP))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paperlib.sgd_step(model, CE, x[:3], y[:3], measure=True, extra=(x[3:6], y[3:6]),
                          sampling=paperlib.Sampling.independent(N_POP))
