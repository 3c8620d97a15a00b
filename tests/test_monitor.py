"""paperlib.monitor: G and N from accumulation micro-batches and DDP ranks.

Statistical tests: a finite population of n per-example gradients a_i with known G = |w − ā|²
and Σ₁ (per-example loss ½|w − a_i|² at a fixed point w), seeded, float64, two-sided z-tests at
ALPHA with standard errors over independent epochs; each has a power check: the same raw norms
read with the wrong sampling scheme must be rejected.
"""

import contextlib
import copy
import gc
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

import paperlib
from paperlib.lsr import predict_critical_batch, simple_noise_scale
from paperlib.monitor import NoiseMonitor, estimate_from_norms
from paperlib.nsr import direct_nsr, direct_nsr_from_norms, noise_trace

from problems import Point, point_loss, tanh_mlp

ALPHA = 1e-3
Z = 3.2905  # two-sided normal quantile at ALPHA




def population(n: int, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = 3.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = a.mean(0) + torch.tensor([0.5] + [0.0] * (d - 1), dtype=torch.float64)
    G = float((w - a.mean(0)).square().sum())
    trace1 = float((a - a.mean(0)).square().sum(1).mean())
    return a, w, G, trace1


def z(values: np.ndarray, truth: float) -> float:
    return (values.mean() - truth) / (values.std(ddof=1) / math.sqrt(len(values)))


# --- the scalar estimator -------------------------------------------------------------------

@pytest.mark.parametrize("n,disjoint", [(None, False), (64, False), (64, True)])
def test_direct_nsr_from_norms_equals_direct_nsr(n, disjoint):
    grads = torch.randn(5, 4, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G, N = direct_nsr(grads, 8, 32, n, disjoint)
    sum_sq = grads.square().sum((-2, -1))
    mean_sq = grads.mean(-2).square().sum(-1)
    G2, N2 = direct_nsr_from_norms(sum_sq, mean_sq, 4, 8, 32, n, disjoint)
    torch.testing.assert_close(G2, G, rtol=1e-12, atol=1e-12)  # same algebra, other rounding
    torch.testing.assert_close(N2, N, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        direct_nsr_from_norms(1.0, 1.0, 1, 8)


def test_simple_noise_scale_and_b_star_relation():
    G, N, B, n = 2.0, 6.0, 32, 1000
    trace1 = N * B * (n - 1) / (n - B)
    assert simple_noise_scale(G, N, B, n) == pytest.approx(trace1 / G)
    assert simple_noise_scale(G, N, B) == pytest.approx(N * B / G)
    # Thm 5.6's B* = C²(B + B_simple·(n − B)/(n − 1))
    assert predict_critical_batch(G, N, B) == pytest.approx(
        2 * (B + simple_noise_scale(G, N, B, n) * (n - B) / (n - 1)))
    for bad in [dict(G=0.0), dict(N=-1.0), dict(batch_size=1000, n=1000)]:
        with pytest.raises(ValueError):
            simple_noise_scale(**{"G": G, "N": N, "batch_size": B, "n": n, **bad})


# --- gradient accumulation ------------------------------------------------------------------

def _accumulate(model, mon, a_batches, k, scale=1.0, accumulation="mean"):
    for a in a_batches:
        loss = point_loss(model(a))
        ((loss / k if accumulation == "mean" else loss) * scale).backward()


def test_a_partial_accumulation_group_is_skipped_not_misread():
    """k = 4 micro-batches of 8 (B = 32); an epoch of 14 micro-batches ends with a step of 2
    (each still of 8 examples, not B/2 = 16) and then one of 1: both are skipped with a warning,
    and a first step with one micro-batch is still refused (a loop without accumulation)."""
    torch.manual_seed(0)
    model = tanh_mlp(6, 8, 3)
    x, y = torch.randn(14 * 8, 6), torch.randint(0, 3, (14 * 8,))
    mon = NoiseMonitor(model, batch_size=32, sampling=paperlib.Sampling.shuffled(14 * 8))
    groups = [4, 4, 4, 2, 4, 4, 4, 1]
    rows, start = [], 0
    with pytest.warns(UserWarning, match="partial accumulation group") as caught:
        for g in groups:
            for j in range(start, start + g):
                xm, ym = x[8 * (j % 14):][:8], y[8 * (j % 14):][:8]
                (torch.nn.functional.cross_entropy(model(xm), ym) / 4).backward()
            start += g
            rows.append(mon.step(lr=0.1))
            model.zero_grad(set_to_none=True)
    assert [r is None for r in rows] == [g < 4 for g in groups]
    assert mon.measured == 6 and mon.skipped == 2 and len(caught) == 2  # once per reason
    net = tanh_mlp(6, 8, 3)
    first = NoiseMonitor(net, batch_size=32, sampling=paperlib.Sampling.shuffled(112))
    torch.nn.functional.cross_entropy(net(x[:32]), y[:32]).backward()
    with pytest.raises(ValueError, match="one micro-batch per step"):
        first.step()


def test_every_measures_each_mth_step_as_the_every_step_monitor_does_and_detaches_between():
    """every=3: rows at steps 1, 4, 7, 10 equal to an every-step monitor's on the same backward
    passes; no hook sees the steps between; remove() keeps them detached; bad values refused."""
    torch.manual_seed(0)
    model = tanh_mlp(6, 8, 3)
    x, y = torch.randn(12 * 32, 6), torch.randint(0, 3, (12 * 32,))
    sampling = paperlib.Sampling.shuffled(12 * 32)
    each = NoiseMonitor(model, batch_size=32, sampling=sampling, window=None)
    third = NoiseMonitor(model, batch_size=32, sampling=sampling, window=None, every=3)
    # detached, a parameter keeps no empty hook dict (autograd would call into Python for it
    # on every backward) unless another hook (here `each`'s) still needs it
    alone = tanh_mlp(6, 8, 3)
    seen_alone = []
    alone[0].weight.register_hook(lambda g: seen_alone.append(1))  # the user's own hook
    solo = NoiseMonitor(alone, batch_size=32, sampling=sampling, every=2)
    for xm, ym in zip(x[:32].chunk(4), y[:32].chunk(4), strict=True):
        torch.nn.functional.cross_entropy(alone(xm), ym).backward()
    assert solo.step() is not None  # step 1 is measured; the hooks then detach until step 3
    assert solo._taps._handles == [] and len(seen_alone) == 4
    assert alone[0].weight._backward_hooks is not None  # the user's hook is kept
    assert all(p._backward_hooks is None for p in solo.params if p is not alone[0].weight)
    rows = []
    for s in range(11):
        for xm, ym in zip(x[32 * s:32 * (s + 1)].chunk(4), y[32 * s:32 * (s + 1)].chunk(4),
                          strict=True):
            (torch.nn.functional.cross_entropy(model(xm), ym) / 4).backward()
        seen = max(third._taps._counts)  # backward passes its hooks saw this step
        assert seen == (4 if s % 3 == 0 else 0)
        r_each, r_third = each.step(lr=0.1), third.step(lr=0.1)
        rows.append(r_third)
        if s % 3 == 0:
            assert r_third["step"] == s + 1
            assert (r_third["G"], r_third["N"]) == (r_each["G"], r_each["N"])
        model.zero_grad(set_to_none=True)
    assert [r is not None for r in rows] == [s % 3 == 0 for s in range(11)]
    assert third.measured == 4 and third.skipped == 0 and third.summary()["count"] == 4
    assert third.summary()["G"] == pytest.approx(
        sum(r["G"] for r in each.history[::3]) / 4)
    third.remove()
    torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
    assert third.step() is None  # step 12 re-attaches the hooks for step 13, unless removed
    assert third._taps._handles == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every="):
            NoiseMonitor(model, batch_size=32, sampling=sampling, every=bad)
    with pytest.raises(ValueError, match="every=2 is for the sources whose gradients"):
        NoiseMonitor(batch_size=32, sampling=sampling, every=2)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_accumulation_equals_the_k_sample_estimator_on_the_micro_gradients(k):
    torch.manual_seed(0)
    model = tanh_mlp(6, 8, 3)
    ref = copy.deepcopy(model)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    mon = NoiseMonitor(model, batch_size=32, sampling=paperlib.Sampling.shuffled(100))
    grads = []
    for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
        loss = torch.nn.functional.cross_entropy(ref(xm), ym)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            loss, list(ref.parameters()))]))
        (torch.nn.functional.cross_entropy(model(xm), ym) / k).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # p.grad is not what it reads
    row = mon.step(lr=0.1)
    G, N = direct_nsr(torch.stack(grads), 32 // k, 32, 100, True)
    # float32 gradients summed in another order: equal to float32 rounding
    assert row["G"] == pytest.approx(float(G), rel=1e-5, abs=1e-7)
    assert row["N"] == pytest.approx(float(N), rel=1e-5)
    assert row["sources"] == k and mon.measured == 1


def test_accumulation_unbiased_and_its_standard_error_falls_with_k():
    n, B, epochs = 48, 16, 500
    a, w, G, trace1 = population(n)
    N = noise_trace(trace1, B, n)
    gen = torch.Generator().manual_seed(3)
    se = {}
    for k in (2, 4, 8):
        model = Point(w)
        mon = NoiseMonitor(model, batch_size=B, sampling=paperlib.Sampling.shuffled(n),
                           window=None)
        per_epoch = []
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(n // B):  # consecutive batches of a shuffled DataLoader
                _accumulate(model, mon, a[perm[s * B:(s + 1) * B]].chunk(k), k)
                mon.step(lr=0.0)
            per_epoch.append(mon.history[-(n // B):])
        rows = mon.history
        g_hat = np.array([[r["G"] for r in e] for e in per_epoch]).mean(1)  # epoch means
        n_hat = np.array([[r["N"] for r in e] for e in per_epoch]).mean(1)
        assert abs(z(g_hat, G)) < Z, (k, g_hat.mean(), G)
        assert abs(z(n_hat, N)) < Z, (k, n_hat.mean(), N)
        # power: the same norms read as sampling with replacement are detected as biased
        wrong = np.array([estimate_from_norms(r["sum_sq"], r["grad_sq"], sources=k,
                                              batch_size=B,
                                              sampling=paperlib.Sampling.with_replacement())
                          for r in rows]).reshape(epochs, -1, 2).mean(1)
        assert abs(z(wrong[:, 0], G)) > Z and abs(z(wrong[:, 1], N)) > Z, k
        steps = np.array([[r["G"], r["N"]] for r in rows])
        se[k] = steps.std(0, ddof=1) / math.sqrt(len(steps))
    assert se[2][0] > se[4][0] > se[8][0], se  # G
    assert se[2][1] > se[4][1] > se[8][1], se  # N


class _Tensors(torch.nn.Module):
    """Three parameter tensors of different shapes; ``feed`` makes their gradient exact."""

    def __init__(self, dtype):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(7, 5, dtype=dtype))
        self.b = torch.nn.Parameter(torch.zeros(11, dtype=dtype))
        self.c = torch.nn.Parameter(torch.zeros(3, 2, 2, dtype=dtype))

    def feed(self, grads):
        """One backward pass whose gradient is ``grads`` (None: a tensor it does not reach)."""
        sum((p * g).sum() for p, g in zip(self.parameters(), grads, strict=True)
            if g is not None).backward()


def _random_steps(dtype, steps, k, seed):
    """Per step, k micro-batches of gradients: a shared mean plus noise of the same size (so
    G/N is of order one and the estimator's cancellation stays small)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [p.shape for p in _Tensors(dtype).parameters()]
    out = []
    for _ in range(steps):
        mu = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        out.append([[m + torch.randn(s, generator=gen, dtype=dtype)
                     for m, s in zip(mu, shapes, strict=True)] for _ in range(k)])
    return out


def _exact_norms(micro):
    """(Σ_j |g_j|², |Σ_j g_j|² / K², K) of one step, with the sums exact (``math.fsum`` of the
    squares, exact in float64 for float32 and rounded once for float64) and Σ_j g_j summed
    in the gradients' dtype in arrival order, as autograd accumulates it."""
    sum_sq = math.fsum(x * x for g in micro for t in g if t is not None
                       for x in t.double().reshape(-1).tolist())
    acc, counts = [None] * 3, [0] * 3
    for g in micro:
        for i, t in enumerate(g):
            if t is not None:
                acc[i] = t.clone() if acc[i] is None else acc[i] + t
                counts[i] += 1
    mean_sq = math.fsum(x * x for t in acc if t is not None
                        for x in t.double().reshape(-1).tolist())
    K = max(counts)
    return sum_sq, mean_sq / K ** 2, K


@pytest.mark.parametrize("n", [None, 1000])
def test_estimate_from_norms_is_direct_nsr_from_norms_bit_for_bit(n):
    """The monitor's float arithmetic does direct_nsr_from_norms's tensor operations in the
    same order: the same float64 numbers, on random norms of every sampling scheme."""
    rng = np.random.default_rng(2)
    schemes = ([paperlib.Sampling.with_replacement()] if n is None else
               [paperlib.Sampling.shuffled(n), paperlib.Sampling.independent(n)])
    for sampling in schemes:
        for _ in range(200):
            K = int(rng.choice([2, 3, 4, 8]))
            B = K * int(rng.integers(1, 20))
            sum_sq, mean_sq = rng.uniform(0, 10) * K, rng.uniform(0, 10)
            G, N = estimate_from_norms(sum_sq, mean_sq, sources=K, batch_size=B,
                                       sampling=sampling)
            G2, N2 = direct_nsr_from_norms(sum_sq, mean_sq, K, B // K, B, sampling.population,
                                           sampling.disjoint)
            assert (G, N) == (float(G2), float(N2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stage", [True, False])
def test_accumulation_equals_the_reference_on_random_gradients(dtype, stage, monkeypatch):
    """Both ways of squaring the gradients (a flat float64 copy and ``torch.dot`` on the CPU,
    ``torch._foreach_norm`` elsewhere) give, step after step, the estimator on exact sums to
    float64 rounding; in float64 also direct_nsr on the stacked gradients. Micro-batches that
    reach only some tensors (first or later in a step) are counted as before."""
    import paperlib.grad_taps

    monkeypatch.setattr(paperlib.grad_taps, "STAGE_MAX", 1 << 24 if stage else 0)
    k, B, sampling = 4, 32, paperlib.Sampling.shuffled(1000)
    model = _Tensors(dtype)
    mon = NoiseMonitor(model, batch_size=B, sampling=sampling, accumulation="sum")
    assert (mon._taps._stage is not None) == stage
    steps = _random_steps(dtype, 3, k, seed=5)
    steps.append([[g[0], None, g[2]] if j == 0 else g for j, g in enumerate(steps[0])])
    steps.append([[None, g[1], None] if j == 2 else g for j, g in enumerate(steps[1])])
    for micro in steps:
        for g in micro:
            model.feed(g)
        row = mon.step(lr=0.1)
        sum_sq, mean_sq, K = _exact_norms(micro)
        G, N = estimate_from_norms(sum_sq, mean_sq, sources=K, batch_size=B, sampling=sampling)
        assert row["sources"] == K == k
        assert row["sum_sq"] == pytest.approx(sum_sq, rel=1e-14)
        assert row["grad_sq"] == pytest.approx(mean_sq, rel=1e-14)
        assert row["G"] == pytest.approx(G, rel=1e-12) and row["N"] == pytest.approx(N, rel=1e-12)
        if dtype == torch.float64 and all(t is not None for g in micro for t in g):
            flat = torch.stack([torch.cat([t.reshape(-1) for t in g]) for g in micro])
            G_ref, N_ref = direct_nsr(flat, B // k, B, 1000, disjoint=True)
            assert row["G"] == pytest.approx(float(G_ref), rel=1e-12)
            assert row["N"] == pytest.approx(float(N_ref), rel=1e-12)
        model.zero_grad(set_to_none=True)


def test_grad_scaler_scaling_leaves_the_estimate_unchanged_and_overflow_is_skipped():
    n, B, k = 48, 16, 4
    a, w, *_ = population(n)
    a, w = a.float(), w.float()
    plain, scaled = Point(w), Point(w)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    m1 = NoiseMonitor(plain, batch_size=B, sampling=paperlib.Sampling.shuffled(n))
    m2 = NoiseMonitor(scaled, batch_size=B, sampling=paperlib.Sampling.shuffled(n),
                      scaler=scaler)
    for s in range(3):
        batch = a[s * B:(s + 1) * B].chunk(k)
        _accumulate(plain, m1, batch, k)
        for ab in batch:
            scaler.scale(point_loss(scaled(ab)) / k).backward()
        r1, r2 = m1.step(), m2.step()
        # a power-of-two scale is exact in floating point: equal to rounding of the sums
        assert r2["G"] == pytest.approx(r1["G"], rel=1e-6)
        assert r2["N"] == pytest.approx(r1["N"], rel=1e-6)
    # the same with scale= given by hand and the "sum" convention (loss not divided by k)
    model3 = Point(w)
    m3 = NoiseMonitor(model3, batch_size=B, sampling=paperlib.Sampling.shuffled(n),
                      accumulation="sum")
    _accumulate(model3, m3, a[2 * B:3 * B].chunk(k), k, scale=256.0, accumulation="sum")
    r3 = m3.step(scale=256.0)
    assert r3["G"] == pytest.approx(r1["G"], rel=1e-6)
    assert r3["N"] == pytest.approx(r1["N"], rel=1e-6)
    # overflow: inf gradients are skipped (GradScaler skips the optimizer step too)
    _accumulate(model3, m3, a[:B].chunk(k), k, scale=float("inf"))
    assert m3.step(scale=1.0) is None
    assert m3.skipped == 1 and "non-finite" in next(iter(m3.skip_reasons))
    with pytest.warns(UserWarning, match="no backward") as caught:  # a loop mistake: said once
        assert m3.step() is None and m3.skipped == 2  # no backward since the last step
    assert caught[0].filename == __file__  # points at the caller's line, not into paperlib
    assert m3.summary()["C2"] == 2.0  # C = √2 by default; √2² is 2.0000000000000004 in floats


# --- one micro-batch: sgd_step's half batches ------------------------------------------------

def test_step_stats_source_takes_sgd_steps_estimate():
    torch.manual_seed(0)
    model = tanh_mlp(6, 8, 3)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    sampling = paperlib.Sampling.shuffled(200)
    mon = NoiseMonitor(None, batch_size=32, sampling=sampling)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    stats = paperlib.sgd_step(model, loss_fn, x, y, sampling=sampling, measure=True)
    row = mon.step(0.1, stats=stats)
    assert (row["G"], row["N"]) == (float(stats.G), float(stats.N))
    with pytest.raises(ValueError, match="needs step\\(stats"):
        mon.step(0.1)
    with pytest.raises(ValueError, match="one micro-batch"):
        m = NoiseMonitor(model, batch_size=32, sampling=sampling)
        loss_fn(model(x), y).mean().backward()
        m.step()


# --- reports ----------------------------------------------------------------------------------

def _fed(values, lrs=None, **kw):
    mon = NoiseMonitor(None, batch_size=8, sampling=paperlib.Sampling.shuffled(1000), **kw)
    for i, (g, nn) in enumerate(values):
        stats = paperlib.StepStats(torch.zeros(1), torch.zeros(()), 8, None,
                                   torch.tensor(g, dtype=torch.float64),
                                   torch.tensor(nn, dtype=torch.float64))
        mon.step(lrs[i] if lrs else 0.1, stats=stats)
    return mon


def test_summary_window_ema_and_predictions():
    rng = np.random.default_rng(0)
    vals = [(1.0 + 0.3 * rng.standard_normal(), 4.0 + rng.standard_normal()) for _ in range(60)]
    mon = _fed(vals, window=40, blocks=10, ema=0.9)
    s = mon.summary()
    last = np.array(vals[-40:])
    assert s["count"] == 40 and s["se_from"] == "blocks"
    assert s["G"] == pytest.approx(last[:, 0].mean()) and s["N"] == pytest.approx(last[:, 1].mean())
    blocks = last.reshape(10, 4, 2).mean(1)
    assert s["G_se"] == pytest.approx(blocks[:, 0].std(ddof=1) / math.sqrt(10))
    r = s["N"] / s["G"]
    assert s["N_over_G"] == pytest.approx(r) and s["G_over_N"] == pytest.approx(1 / r)
    assert s["G_over_N_se"] == pytest.approx(s["N_over_G_se"] / r ** 2)
    assert s["B_star"] == pytest.approx(predict_critical_batch(s["G"], s["N"], 8))
    assert s["B_star_se"] == pytest.approx(8 * 2 * s["N_over_G_se"])
    assert s["B_simple"] == pytest.approx(simple_noise_scale(s["G"], s["N"], 8, 1000))
    # bias-corrected EMA over all 60 steps
    ema_g = 0.0
    for g, _ in vals:
        ema_g = 0.9 * ema_g + 0.1 * g
    assert s["ema_G"] == pytest.approx(ema_g / (1 - 0.9 ** 60))
    assert s["lr_constant"] is True
    assert _fed(vals[:10], lrs=[0.1] * 5 + [0.01] * 5).summary()["lr_constant"] is False
    one = _fed(vals[:1], ema=0.9).summary()  # bias correction: the first EMA is the value
    assert one["ema_G"] == pytest.approx(vals[0][0]) and math.isnan(one["G_se"])


def test_csv_log_feeds_predict_lsr(tmp_path, capsys):
    from paperlib.__main__ import main

    rng = np.random.default_rng(1)
    vals = [(1.0 + 0.2 * rng.standard_normal(), 3.0 + 0.5 * rng.standard_normal())
            for _ in range(50)]
    mon = _fed(vals, log_dir=tmp_path, tensorboard=False)
    mon.remove()
    lines = (tmp_path / "noise.jsonl").read_text().splitlines()
    assert len(lines) == 50 and json.loads(lines[-1])["G"] == pytest.approx(vals[-1][0])
    assert main(["predict-lsr", str(tmp_path / "noise.csv"), "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    b_star = float(out.split("B* = B·C²(1 + N/G) = ")[1].split()[0])
    second_half = np.array(vals[25:])
    expected = predict_critical_batch(second_half[:, 0].mean(), second_half[:, 1].mean(), 8)
    assert b_star == pytest.approx(expected, abs=0.5)


def test_bad_arguments():
    s = paperlib.Sampling.shuffled(100)
    model = torch.nn.Linear(2, 2)
    cases = [
        (dict(batch_size=1, sampling=s), "batch_size=1"),
        (dict(batch_size=8, sampling="shuffled"), "sampling must be"),
        (dict(batch_size=100, sampling=s), "batch_size=100"),
        (dict(batch_size=8, sampling=s, source="halves"), "source='halves'"),
        (dict(batch_size=8, sampling=s, source="ranks"), "DistributedDataParallel"),
        (dict(batch_size=8, sampling=s, accumulation="avg"), "accumulation='avg'"),
        (dict(batch_size=8, sampling=s, ema=1.0), "ema=1.0"),
        (dict(batch_size=8, sampling=s, window=1), "window=1"),
        (dict(batch_size=8, sampling=s, C=1.0), "C must be > 1"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            NoiseMonitor(model, **kw)
    # A step the sizes do not fit (a partial last batch) is skipped with a warning, not a
    # crash of the user's training run, and not measured with the wrong sizes.
    mon = NoiseMonitor(model, batch_size=9, sampling=s)
    for _ in range(2):
        model(torch.randn(3, 2)).sum().backward()
    with pytest.warns(UserWarning, match="not a multiple of the 2 sources"):
        assert mon.step() is None
    mon = NoiseMonitor(model, batch_size=8, sampling=s)
    for _ in range(2):
        model(torch.randn(2, 2)).sum().backward()  # 4 examples: a partial batch of B = 8
    with pytest.warns(UserWarning, match="partial batch"):
        assert mon.step(examples=4) is None
    for _ in range(2):
        model(torch.randn(4, 2)).sum().backward()
    assert mon.step(examples=8) is not None and mon.skipped == 1 and mon.measured == 1
    from paperlib.stepstats import StepStats
    st = StepStats(torch.zeros(3), torch.zeros(()), 16, None, torch.ones(()), torch.ones(()))
    with pytest.raises(ValueError, match="16 examples"):
        NoiseMonitor(None, batch_size=32, sampling=s, source="step_stats").step(stats=st)


# --- DDP: 2 processes, gloo --------------------------------------------------------------------

DDP_N, DDP_B, DDP_EPOCHS = 24, 6, 400


def _run_ddp(worker, tmp_path) -> dict:
    """Run ``worker(rank, 2, init_file, out)`` on 2 gloo processes; rank 0's JSON result."""
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.json"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    return json.loads(out.read_text())


def _report(rank: int, out: str, result: dict) -> None:
    """Rank 0 writes the result; then both ranks leave the process group together (each DDP
    reducer already gone, as in the bench)."""
    import torch.distributed as dist

    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    a, w, G, trace1 = population(DDP_N)
    model = DDP(Point(w))
    sampling = paperlib.Sampling.shuffled(DDP_N)  # DistributedSampler: one permutation
    mon = NoiseMonitor(model, batch_size=DDP_B, sampling=sampling, window=None)
    sparse = DDP(Point(w))  # every=2 on the same batches: the rows of the steps it measures
    mon_every = NoiseMonitor(sparse, batch_size=DDP_B, sampling=sampling, every=2)
    b = DDP_B // world
    sampler = DistributedSampler(range(DDP_N), num_replicas=world, rank=rank, shuffle=True,
                                 seed=7)
    pairs, every = [], []
    for epoch in range(DDP_EPOCHS):
        sampler.set_epoch(epoch)
        mine = torch.tensor(list(sampler))
        for s in range(len(mine) // b):
            idx = mine[s * b:(s + 1) * b]
            point_loss(model(a[idx])).backward()
            row = mon.step(lr=0.0)
            model.zero_grad()
            if epoch < 3:
                point_loss(sparse(a[idx])).backward()
                r2 = mon_every.step(lr=0.0)
                sparse.zero_grad()
                if r2 is not None:
                    every.append([row["G"], r2["G"], row["N"], r2["N"]])
            if epoch == 0 and s < 3:  # the same two halves, one process, accumulation k = 2
                both = [torch.zeros_like(idx) for _ in range(world)]
                dist.all_gather(both, idx)
                if rank == 0:
                    ref = Point(w)
                    one = NoiseMonitor(ref, batch_size=DDP_B, sampling=sampling)
                    for half in both:
                        (point_loss(ref(a[half])) / world).backward()
                    r1 = one.step(lr=0.0)
                    pairs.append([row["G"], r1["G"], row["N"], r1["N"]])
    result = {"rows": mon.history, "pairs": pairs, "every": every, "G": G, "trace1": trace1}
    del model, mon, sparse, mon_every  # DDP reducers before their process group (as the bench)
    _report(rank, out, result)


def _ddp_no_sync_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """k = 2 micro-batches per rank, the first inside no_sync(): 4 sources per step, against
    one process accumulating the same 4 micro-batches; a float64 Point and a float32 MLP. Again
    with both micro-batches synchronized (no no_sync(): DDP all-reduces the accumulated .grad
    twice per step)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    a, w, *_ = population(48)
    torch.manual_seed(0)
    mlp = tanh_mlp(3, 8, 2)
    labels = torch.randint(0, 2, (48,), generator=torch.Generator().manual_seed(1))
    nets = {"point": (lambda: Point(w), lambda m, i: point_loss(m(a[i]))),
            "mlp": (lambda: copy.deepcopy(mlp), lambda m, i: torch.nn.functional.cross_entropy(
                m(a[i].float()), labels[i]))}
    sampling = paperlib.Sampling.shuffled(48)
    res = {}
    for (name, (make, loss_of)), synced in itertools.product(nets.items(), (False, True)):
        model = DDP(make())
        mon = NoiseMonitor(model, batch_size=8, sampling=sampling)
        rows = []
        for s in range(3):
            perm = torch.randperm(48, generator=torch.Generator().manual_seed(s))[:8]
            mine = perm.view(2, world, 2)[:, rank]  # micro-batch j of rank r: perm[4j + 2r:][:2]
            with contextlib.nullcontext() if synced else model.no_sync():
                (loss_of(model, mine[0]) / 2).backward()
            (loss_of(model, mine[1]) / 2).backward()
            row = mon.step(lr=0.0)
            model.zero_grad()
            if rank == 0:
                one = make()
                ref = NoiseMonitor(one, batch_size=8, sampling=sampling)
                for j in range(2):
                    for r in range(world):
                        (loss_of(one, perm.view(2, world, 2)[j, r]) / 4).backward()
                r1 = ref.step(lr=0.0)
                rows.append([row["sources"], row["G"], r1["G"], row["N"], r1["N"]])
        res[name + ("-synced" if synced else "")] = rows
        del model, mon
    _report(rank, out, res)


@pytest.mark.slow
def test_ddp_no_sync_accumulation_equals_the_single_process_estimate(tmp_path):
    """DDP with gradient accumulation (the first micro-batch of each rank inside no_sync()):
    4 sources per step, equal to one process accumulating the same 4 micro-batches, to float64
    rounding (Point) and to float32 rounding of the summation order (MLP). The same when every
    micro-batch is synchronized (a loop without no_sync(): more communication, same numbers)."""
    res = _run_ddp(_ddp_no_sync_worker, tmp_path)
    for name, rel in (("point", 1e-9), ("mlp", 1e-5), ("point-synced", 1e-9),
                      ("mlp-synced", 1e-5)):
        assert len(res[name]) == 3
        for K, g_ddp, g_one, n_ddp, n_one in res[name]:
            assert K == 4
            assert g_ddp == pytest.approx(g_one, rel=rel), name
            assert n_ddp == pytest.approx(n_one, rel=rel), name


def _ddp_carry_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Per dtype: the same 3 DDP steps with the ranks' totals carried by the last bucket's
    all-reduce (the default) and with a separate all-reduce (``CARRIERS`` emptied), counting the
    all-reduce calls of each step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import paperlib.grad_taps as taps

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    calls = [0]
    all_reduce = dist.all_reduce

    def counted(*args, **kwargs):
        calls[0] += 1
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted
    torch.manual_seed(0)
    mlp = tanh_mlp(3, 8, 2)
    x = torch.randn(3, 8, 3, generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, 2, (3, 8), generator=torch.Generator().manual_seed(10 + rank))
    res = {}
    for dtype in (torch.float64, torch.float32, torch.float16):
        for carry in (True, False):
            model = DDP(copy.deepcopy(mlp).to(dtype))
            mon = NoiseMonitor(model, batch_size=16, sampling=paperlib.Sampling.shuffled(1000))
            rows = []
            carriers = taps.CARRIERS
            taps.CARRIERS = carriers if carry else ()
            for s in range(3):
                calls[0] = 0
                torch.nn.functional.cross_entropy(model(x[s].to(dtype)), y[s]).backward()
                row = mon.step(lr=0.0)
                rows.append([calls[0], row["sum_sq"], row["grad_sq"], row["G"], row["N"]])
                model.zero_grad()
            taps.CARRIERS = carriers
            res[f"{dtype}-{carry}"] = rows
            mon.remove()
            del model, mon
            gc.collect()  # each DDP reducer goes while its process group is alive
    dist.all_reduce = all_reduce
    # rank 1 stops monitoring (remove()) at step 2 and pauses it at step 3, while rank 0 goes
    # on and both call step() throughout: the collectives still match (no hang, no abort)
    for dtype in (torch.float32, torch.float16):
        model = DDP(copy.deepcopy(mlp).to(dtype))
        mon = NoiseMonitor(model, batch_size=16, sampling=paperlib.Sampling.shuffled(1000))
        measured = []
        for s in range(3):
            if s == 1 and rank == 1:
                mon.remove()
            with mon.paused() if (s == 2 and rank == 1) else contextlib.nullcontext():
                torch.nn.functional.cross_entropy(model(x[s].to(dtype)), y[s]).backward()
            measured.append(mon.step(lr=0.0) is not None)
            model.zero_grad()
        skips = [None] * world
        dist.all_gather_object(skips, mon.skip_reasons)
        res[f"one_removed-{dtype}"] = {"measured": measured, "skips": skips}
        mon.remove()
        del model, mon
        gc.collect()
    _report(rank, out, res)


@pytest.mark.slow
def test_ddp_ranks_totals_ride_on_the_gradient_all_reduce(tmp_path):
    """The ranks' Σ_j |g_j|² and K travel in DDP's own all-reduce (no collective of the
    monitor's own per step) for float32 and float64 buckets, with the numbers of a separate
    float64 all-reduce: exact for float64, to float32 rounding for float32. A float16 bucket,
    which could round or overflow them, gets a float64 all-reduce beside it. A rank whose monitor
    was removed (then paused) and that keeps calling step() makes the same collectives as the
    measuring rank (no abort, no hang), in float32 and float16; both skip those steps."""
    res = _run_ddp(_ddp_carry_worker, tmp_path)
    for dtype, calls, rel in (("torch.float64", 1, 1e-12), ("torch.float32", 1, 1e-6),
                              ("torch.float16", 2, 0.0)):
        carried, separate = res[f"{dtype}-True"], res[f"{dtype}-False"]
        # all-reduce calls per step: the net's one gradient bucket (DDP's own, made by the
        # monitor's communication hook), and the monitor's own one where nothing carried it
        assert [r[0] for r in carried] == [calls] * 3, dtype
        assert [r[0] for r in separate] == [2] * 3, dtype
        for a, b in zip(carried, separate, strict=True):
            assert all(math.isfinite(v) for v in a[1:]), dtype
            assert a[1:] == pytest.approx(b[1:], rel=rel, abs=1e-30), dtype
    # a rank that stopped measuring does not break the others' collectives: both skip
    for dtype in ("torch.float32", "torch.float16"):
        one = res[f"one_removed-{dtype}"]
        assert one["measured"] == [True, False, False], dtype
        assert one["skips"][0] == {"ranks ran different numbers of micro-batches": 2}, dtype
        assert one["skips"][1] == {"no backward pass since the last step": 2}, dtype


@pytest.mark.slow
def test_ddp_two_ranks_equal_the_single_process_estimate_and_are_unbiased(tmp_path):
    res = _run_ddp(_ddp_worker, tmp_path)
    for g_ddp, g_one, n_ddp, n_one in res["pairs"]:  # float64 throughout; other summation order
        assert g_ddp == pytest.approx(g_one, rel=1e-9, abs=1e-12)
        assert n_ddp == pytest.approx(n_one, rel=1e-9)
    # every=2 measures steps 1, 3, ... of the first 3 epochs (12 steps) as every step does
    assert len(res["every"]) == 6
    assert all(g == g2 and n == n2 for g, g2, n, n2 in res["every"])
    rows = res["rows"]
    steps = DDP_N // DDP_B
    assert len(rows) == DDP_EPOCHS * steps and all(r["sources"] == 2 for r in rows)
    G, N = res["G"], noise_trace(res["trace1"], DDP_B, DDP_N)
    est = np.array([[r["G"], r["N"]] for r in rows]).reshape(DDP_EPOCHS, steps, 2).mean(1)
    assert abs(z(est[:, 0], G)) < Z and abs(z(est[:, 1], N)) < Z
    # power: the ranks' batches read as independent draws (not one permutation) are rejected
    wrong = np.array([estimate_from_norms(r["sum_sq"], r["grad_sq"], sources=2,
                                          batch_size=DDP_B,
                                          sampling=paperlib.Sampling.independent(DDP_N))
                      for r in rows]).reshape(DDP_EPOCHS, steps, 2).mean(1)
    assert abs(z(wrong[:, 0], G)) > Z or abs(z(wrong[:, 1], N)) > Z


def test_rerun_into_same_log_dir_replaces_the_logs(tmp_path):
    """A second monitor on one log_dir replaces the first run's rows everywhere: CSV, JSONL and
    its own TensorBoard events file; another writer's events file stays."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    foreign = tmp_path / "events.out.tfevents.123.host.1.0"  # e.g. the user's own writer
    foreign.write_bytes(b"")
    first = [(5.0 + i, 50.0) for i in range(6)]
    second = [(1.0 + i, 10.0) for i in range(4)]
    for vals in (first, second):
        mon = _fed(vals, log_dir=tmp_path, tensorboard=True)
        mon.remove()
    assert len(list(tmp_path.glob("events.out.tfevents.*.noise"))) == 1 and foreign.exists()
    foreign.unlink()
    assert len((tmp_path / "noise.csv").read_text().splitlines()) == 1 + len(second)
    assert len((tmp_path / "noise.jsonl").read_text().splitlines()) == len(second)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    shown = [(e.step, e.value) for e in acc.Scalars("noise/G")]
    assert shown == [(i + 1, pytest.approx(g)) for i, (g, _) in enumerate(second)]


def test_rerun_leaves_another_monitors_events_files_alone(tmp_path):
    """A monitor named "noise" replaces only its own events files: not those of a monitor named
    "x.noise" in the same folder, which end in ".noise" too."""
    pytest.importorskip("tensorboard")
    _fed([(1.0, 10.0)] * 3, log_dir=tmp_path, tensorboard=True, name="x.noise").remove()
    other = list(tmp_path.glob("events.out.tfevents.*.x.noise"))
    assert len(other) == 1
    for _ in range(2):
        _fed([(1.0, 10.0)] * 3, log_dir=tmp_path, tensorboard=True).remove()
    assert other[0].exists()
    own = [p for p in tmp_path.glob("events.out.tfevents.*") if p not in other]
    assert len(own) == 1 and own[0].name.endswith(".noise")
