"""G, N and NSR estimators of Sec. 5: unbiasedness under three sampling schemes, exact
per-example values, torch.func per-example gradients, and the window accumulator."""

import functools
import math

import pytest
import torch
from torch import nn

from paperlib.nsr import (
    direct_nsr,
    noise_trace,
    online_nsr,
    per_example_grads,
    per_example_nsr,
    sampler_population,
)
from paperlib.windows import NSRWindow

from problems import DT, TinyGNNet, linear_regression, seeded

N_POP, D, B_SMALL, B_TARGET, S = 40, 3, 5, 10, 200_000

# Near the minimizer, so the NSR is large as in training.
_TOY = linear_regression(N_POP, D, seed=11, near_minimum=True)
PER_EX, G_TRUE, TR1 = _TOY.per_example, _TOY.G, _TOY.trace_sigma1


@functools.cache
def draw(mode: str, k: int, b: int, seed: int) -> torch.Tensor:
    """k batch-mean gradients of size b per replicate, [S, k, D], drawn by actually sampling
    index sets from the population of N_POP examples."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "replacement":
        idx = torch.randint(N_POP, (S, k, b), generator=gen)
    elif mode == "disjoint":  # k disjoint slices of one random permutation
        idx = torch.rand(S, N_POP, generator=gen).argsort(1)[:, : k * b].reshape(S, k, b)
    elif mode == "independent":  # k independent without-replacement draws
        idx = torch.rand(S, k, N_POP, generator=gen).topk(b, dim=2).indices
    else:
        raise AssertionError(mode)
    return PER_EX[idx].mean(2)


def n_target(mode: str, batch_size: int) -> float:
    return noise_trace(TR1, batch_size, None if mode == "replacement" else N_POP)


def z_score(samples: torch.Tensor, truth: float) -> float:
    return float((samples.mean() - truth) / (samples.std() / math.sqrt(samples.numel())))


def test_toy_is_in_the_high_nsr_regime():
    assert TR1 / G_TRUE > 5.0  # finite-population corrections to G are then visible


@pytest.mark.parametrize("mode", ["replacement", "disjoint", "independent"])
def test_online_estimator_unbiased(mode):
    grads = draw(mode, 2, B_SMALL, seed={"replacement": 1, "disjoint": 2, "independent": 3}[mode])
    n = None if mode == "replacement" else N_POP
    g_hat, n_hat = online_nsr(
        grads[:, 0], grads[:, 1], B_SMALL, B_TARGET, n=n, disjoint=(mode == "disjoint")
    )
    assert g_hat.shape == (S,) and g_hat.dtype == DT
    assert abs(z_score(g_hat, G_TRUE)) < 4.0
    assert abs(z_score(n_hat, n_target(mode, B_TARGET))) < 4.0
    # the estimates are precise enough to matter: SE well below the value
    assert float(g_hat.std()) / math.sqrt(S) < 0.05 * G_TRUE


def test_naive_formula_is_detectably_biased():
    """Power: the infinite-population formulas applied to finite-population draws are off by
    far more than 8 SE, so a missing or wrong correction factor fails the tests above."""
    disj = draw("disjoint", 2, B_SMALL, seed=2)
    g_naive, n_naive = online_nsr(disj[:, 0], disj[:, 1], B_SMALL, B_TARGET, n=None)
    assert abs(z_score(g_naive, G_TRUE)) > 8.0
    assert abs(z_score(n_naive, n_target("disjoint", B_TARGET))) > 8.0
    # treating disjoint halves as independent draws is wrong too
    g_wrong, n_wrong = online_nsr(disj[:, 0], disj[:, 1], B_SMALL, B_TARGET, n=N_POP,
                                  disjoint=False)
    assert abs(z_score(g_wrong, G_TRUE)) > 8.0
    assert abs(z_score(n_wrong, n_target("disjoint", B_TARGET))) > 8.0
    indep = draw("independent", 2, B_SMALL, seed=3)
    _, n_naive = online_nsr(indep[:, 0], indep[:, 1], B_SMALL, B_TARGET, n=None)
    assert abs(z_score(n_naive, n_target("independent", B_TARGET))) > 8.0


@pytest.mark.parametrize("mode", ["replacement", "disjoint", "independent"])
def test_direct_estimator_unbiased(mode):
    k, b = 4, 6
    grads = draw(mode, k, b, seed={"replacement": 4, "disjoint": 5, "independent": 6}[mode])
    n = None if mode == "replacement" else N_POP
    g_hat, n_hat = direct_nsr(grads, b=b, batch_size=B_TARGET, n=n, disjoint=(mode == "disjoint"))
    assert abs(z_score(g_hat, G_TRUE)) < 4.0
    assert abs(z_score(n_hat, n_target(mode, B_TARGET))) < 4.0
    if mode != "disjoint":  # raw form: N at the gradients' own batch size, any independent draws
        g_raw, n_raw = direct_nsr(grads)
        assert abs(z_score(g_raw, G_TRUE)) < 4.0
        assert abs(z_score(n_raw, n_target(mode, b))) < 4.0


def test_direct_with_k2_equals_online_and_authors_formula():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(7, 2, 5, generator=gen, dtype=DT)
    gd, nd = direct_nsr(g)
    go, no = online_nsr(g[:, 0], g[:, 1], 3, 3)
    assert torch.allclose(go, (g[:, 0] * g[:, 1]).sum(-1), atol=1e-12)
    assert torch.allclose(no, (g[:, 0] - g[:, 1]).square().sum(-1) / 2, atol=1e-12)
    assert torch.allclose(gd, go, atol=1e-12) and torch.allclose(nd, no, atol=1e-12)
    # k = 5: Ĝ = (k|ḡ|² − mean|g_j|²)/(k − 1), N̂ = mean|g_j|² − Ĝ
    h = torch.randn(5, 4, generator=gen, dtype=DT)
    msq = h.square().sum(1).mean()
    g_expect = (5 * h.mean(0).square().sum() - msq) / 4
    g5, n5 = direct_nsr(h)
    assert float(g5) == pytest.approx(float(g_expect), rel=1e-12)
    assert float(n5) == pytest.approx(float(msq - g_expect), rel=1e-12)


def test_noise_trace_and_per_example_nsr():
    assert noise_trace(12.0, 4) == pytest.approx(3.0)
    assert noise_trace(12.0, 4, n=10) == pytest.approx(3.0 * 6 / 9)
    assert noise_trace(12.0, 10, n=10) == 0.0
    t = noise_trace(torch.tensor([12.0, 24.0], dtype=DT), 4)
    assert torch.allclose(t, torch.tensor([3.0, 6.0], dtype=DT))
    g, n_wo = per_example_nsr(PER_EX, B_TARGET)
    assert float(g) == pytest.approx(G_TRUE, rel=1e-12)
    assert float(n_wo) == pytest.approx(TR1 / B_TARGET * (N_POP - B_TARGET) / (N_POP - 1),
                                        rel=1e-12)
    _, n_w = per_example_nsr(PER_EX, B_TARGET, without_replacement=False)
    assert float(n_w) == pytest.approx(TR1 / B_TARGET, rel=1e-12)
    # with replacement, B may exceed n
    assert float(per_example_nsr(PER_EX, 400, without_replacement=False)[1]) > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: noise_trace(-1.0, 4), "trace_sigma1"),
        (lambda: noise_trace(1.0, 0), "batch_size"),
        (lambda: noise_trace(1.0, 11, n=10), "batch_size"),
        (lambda: noise_trace(1.0, 2, n=1), "n must be"),
        (lambda: online_nsr(torch.zeros(3), torch.zeros(4), 2, 2), "same shape"),
        (lambda: online_nsr(torch.zeros(3), torch.zeros(3), 6, 6, n=10), "k\\*b <= n"),
        (lambda: online_nsr(torch.zeros(3), torch.zeros(3), 10, 5, n=10, disjoint=False),
         "b in"),
        (lambda: online_nsr(torch.zeros(3), torch.zeros(3), 0, 5), "b must be"),
        (lambda: direct_nsr(torch.zeros(1, 3)), "k >= 2"),
        (lambda: direct_nsr(torch.zeros(3)), "k >= 2"),
        (lambda: direct_nsr(torch.zeros(2, 3), n=10), "need the gradients' batch size"),
        (lambda: per_example_nsr(torch.zeros(1, 3), 1), "n >= 2"),
        (lambda: per_example_nsr(torch.zeros(4, 3), 5), "batch_size"),
        (lambda: sampler_population("bogus", 10), "sampler must be one of"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sampler_population():
    assert sampler_population("replacement", 50) is None
    for s in ("reshuffle", "iid", "fixed"):
        assert sampler_population(s, 50) == 50


@pytest.fixture(scope="module")
def cnn_setup():
    # Tiny convolutions: one intra-op thread avoids oversubscription stalls (30x slower when
    # another process holds a core of a 2-core machine); restored after the module's CNN tests.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _cnn_setup()
    finally:
        torch.set_num_threads(threads)


def _cnn_setup():
    model = seeded(TinyGNNet, 0).double()  # seeded init, the global RNG state untouched
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 8, 8, generator=gen, dtype=DT)
    y = torch.randint(10, (64,), generator=gen)
    params = dict(model.named_parameters())
    per_ex = per_example_grads(model, params, x, y, nn.functional.cross_entropy)
    return model, x, y, params, per_ex


def flat_grad(model, loss):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def test_per_example_grads_match_autograd_loop(cnn_setup):
    model, x, y, params, per_ex = cnn_setup
    d = sum(p.numel() for p in model.parameters())
    assert per_ex.shape == (64, d)
    loop = torch.stack([
        flat_grad(model, nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]))
        for i in range(64)
    ])
    assert torch.allclose(per_ex, loop, rtol=1e-10, atol=1e-12)
    chunked = per_example_grads(model, None, x, y, nn.functional.cross_entropy, chunk_size=10)
    assert torch.allclose(chunked, per_ex, rtol=1e-12, atol=1e-14)
    # a subset of parameters: only those columns
    sub = per_example_grads(model, {"fc.weight": params["fc.weight"]}, x, y,
                            nn.functional.cross_entropy)
    start = params["conv.weight"].numel() + params["conv.bias"].numel()
    start += params["norm.weight"].numel() + params["norm.bias"].numel()
    assert torch.allclose(sub, per_ex[:, start : start + 80], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="same non-zero length"):
        per_example_grads(model, params, x, y[:3], nn.functional.cross_entropy)


def test_direct_estimator_on_cnn_matches_exact(cnn_setup):
    """400 minibatch gradients (b = 8, independent without-replacement draws from the 64 images,
    gradients of the minibatch loss) in 20 groups of k = 20: the mean of the group
    estimates of G and N (at B = 16) is within 4 SE of per_example_nsr's exact values."""
    from torch.func import functional_call, grad, vmap

    model, x, y, params, per_ex = cnn_setup
    b, B, groups, k = 8, 16, 20, 20
    gen = torch.Generator().manual_seed(2)
    idx = torch.rand(groups * k, 64, generator=gen).topk(b, dim=1).indices  # [400, b]
    names = list(params)

    def batch_loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    detached = {name: v.detach() for name, v in params.items()}
    g = vmap(grad(batch_loss), in_dims=(None, 0, 0))(detached, x[idx], y[idx])
    grads = torch.cat([g[name].reshape(groups * k, -1) for name in names], dim=1)
    for j in range(3):  # the batched minibatch gradients are plain autograd minibatch gradients
        loop = flat_grad(model, nn.functional.cross_entropy(model(x[idx[j]]), y[idx[j]]))
        assert torch.allclose(grads[j], loop, rtol=1e-10, atol=1e-12)
        assert torch.allclose(grads[j], per_ex[idx[j]].mean(0), rtol=1e-10, atol=1e-12)
    grads = grads.reshape(groups, k, -1)
    g_hat, n_hat = direct_nsr(grads, b=b, batch_size=B, n=64, disjoint=False)
    g_true, n_true = per_example_nsr(per_ex, B)
    for est, truth in ((g_hat, float(g_true)), (n_hat, float(n_true))):
        se = float(est.std()) / math.sqrt(groups)
        assert abs(float(est.mean()) - truth) < 4 * se
        assert se < 0.25 * truth  # not vacuous


def test_nsr_window():
    w = NSRWindow()
    s = w.summary()
    assert s["count"] == 0 and math.isnan(s["G"]) and math.isnan(s["N_over_G"])
    gen = torch.Generator().manual_seed(3)
    gs = 1.0 + 0.5 * torch.randn(500, generator=gen, dtype=DT)
    ns = 4.0 + 0.3 * gs + torch.randn(500, generator=gen, dtype=DT)
    rs = 10.0 + torch.rand(500, generator=gen, dtype=DT)
    for g, n, r in zip(gs, ns, rs, strict=True):
        w.add(g, n, r)
    s = w.summary()
    assert s["count"] == 500
    assert s["G"] == pytest.approx(float(gs.mean()), rel=1e-12)
    assert s["N"] == pytest.approx(float(ns.mean()), rel=1e-12)
    assert s["R"] == pytest.approx(float(rs.mean()), rel=1e-12)
    assert s["G_se"] == pytest.approx(float(gs.std()) / math.sqrt(500), rel=1e-10)
    assert s["R_se"] == pytest.approx(float(rs.std()) / math.sqrt(500), rel=1e-10)
    assert s["N_over_G"] == pytest.approx(float(ns.mean() / gs.mean()), rel=1e-12)
    # delta method with the sample covariance
    cov = torch.cov(torch.stack([gs, ns])) / 500
    r = s["N_over_G"]
    var = (cov[1, 1] - 2 * r * cov[0, 1] + r**2 * cov[0, 0]) / gs.mean() ** 2
    assert s["N_over_G_se"] == pytest.approx(float(var.sqrt()), rel=1e-9)
    w.add(1.0, 2.0)  # R optional
    assert w.summary()["count"] == 501 and w.r_count == 500
    with pytest.raises(ValueError, match="finite"):
        w.add(float("nan"), 1.0)
    with pytest.raises(ValueError, match="r must be"):
        w.add(1.0, 1.0, -1.0)
    w.reset()
    assert w.summary()["count"] == 0
    w.add(-1.0, 1.0)
    assert math.isnan(w.summary()["N_over_G"])
