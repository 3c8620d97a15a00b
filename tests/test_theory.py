"""paperlib.theory: the closed forms used as references, against Monte Carlo at small scale; the
tail-index estimator on known samples; Lemma 4.7 by enumeration; the checksummed result store;
the claims (intervals, verdicts); validation.

Statistical checks are seeded and use |z| < 4 (two-sided α ≈ 6e-5 per check)."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from paperlib import theory
from paperlib.claims import VERDICTS
from paperlib.equilibrium import eq11_sides
from paperlib.files import StaleResultError

Z = 4.0


# ----------------------------------------------------------------------------- Lemma 4.7


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("l", [1, 3, 16, 100])
def test_lemma47_exact_form_matches_enumeration(B, l):
    per_ex = theory.lemma47_toy(5, 2, seed=3)
    gb = theory.batch_population(per_ex, B)
    grad, c = gb.mean(0), gb - gb.mean(0)
    sigma = c.T @ c / len(c)
    lam = torch.einsum("pi,pj,pk->ijk", c, c, c) / len(c)
    m = theory.svag_increment_moments(per_ex, batch_size=B, l=l, eta=0.3)
    exact = theory.lemma47_formulas(grad, sigma, lam, l=l, eta=0.3)
    for key in ("mean", "second", "third"):
        assert torch.allclose(m[key], exact[key], rtol=1e-10, atol=1e-15), key
    # the printed (iii) has the opposite sign (and its cross term lacks a factor l)
    printed = theory.lemma47_formulas(grad, sigma, lam, l=l, eta=0.3, printed=True)
    assert (m["third"] - printed["third"]).norm() > 0.5 * printed["third"].norm()


def test_lemma47_population_stats_match_with_replacement_formulas():
    """Σ_B = Σ₁/B and Λ_B = Λ₁/B² for with-replacement batches (what the enumeration gives)."""
    per_ex = theory.lemma47_toy(4, 2, seed=0)
    c1 = per_ex - per_ex.mean(0)
    gb = theory.batch_population(per_ex, 3)
    c = gb - gb.mean(0)
    assert torch.allclose(c.T @ c / len(c), c1.T @ c1 / 4 / 3, rtol=1e-12)
    lam1 = torch.einsum("pi,pj,pk->ijk", c1, c1, c1) / 4
    assert torch.allclose(torch.einsum("pi,pj,pk->ijk", c, c, c) / len(c), lam1 / 9, rtol=1e-10)


def test_lemma47_frame_small():
    S = dataclasses.replace(theory.settings("smoke"),
                            lemma=theory.LemmaSettings(n=3, batch_sizes=(1,), l_values=(1, 8)))
    df = theory.lemma47(S)
    exact = df[df.moment.isin(["(i)", "(ii)", "(iii)"])]
    assert exact.rel_err.max() < 1e-12
    assert df[df.moment == "(iii) printed"].rel_err.min() > 0.5
    # (iii) and (iv) scale like l^-2 asymptotically: the l = 8 / l = 1 ratio is below 8^-1
    for moment in ("(iii)", "(iv)"):
        v = df[df.moment == moment].set_index("l")["norm"]
        assert v[8] / v[1] < 1 / 8


# ----------------------------------------------------------------------------- OU model


def _gaussian_fourth(mu, cov):
    """E|x|⁴ for x ~ N(mu, cov)."""
    tr, m2 = np.trace(cov), mu @ mu
    return (tr + m2) ** 2 + 2 * np.trace(cov @ cov) + 4 * mu @ cov @ mu


def test_moments_from_cumulants_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mu, M = rng.normal(size=3), rng.normal(size=(3, 3))
    cov = M @ M.T
    c = {1: mu, 2: cov, 3: np.zeros((3,) * 3), 4: np.zeros((3,) * 4)}
    m2, m4 = theory.moments_from_cumulants(c)
    assert m2 == pytest.approx(np.trace(cov) + mu @ mu, rel=1e-12)
    assert m4 == pytest.approx(_gaussian_fourth(mu, cov), rel=1e-12)


@pytest.mark.parametrize("l", [1, 4])
def test_ou_svag_cumulants_match_monte_carlo(l):
    model, eta, T, n = theory.OUModel(), 0.5, 1.0, 200_000
    x = theory.simulate_ou_svag(model, eta=eta, l=l, T=T, paths=n, seed=1)
    c = theory.ou_svag_cumulants(model, eta=eta, l=l, T=T)
    m2, m4 = theory.moments_from_cumulants(c)
    sq = (x**2).sum(1)
    assert abs(sq.mean() - m2) < Z * sq.std() / math.sqrt(n)
    assert abs((sq**2).mean() - m4) < Z * (sq**2).std() / math.sqrt(n)
    assert np.all(np.abs(x.mean(0) - c[1]) < Z * x.std(0) / math.sqrt(n))
    # third cumulant of the first coordinate (skewed noise): k-statistic vs κ3[0, 0, 0]
    parts = [stats.kstat(p, 3) for p in np.array_split(x[:, 0], 100)]
    assert abs(stats.kstat(x[:, 0], 3) - c[3][0, 0, 0]) < Z * np.std(parts, ddof=1) / 10
    assert abs(c[3][0, 0, 0]) > 10 * np.std(parts, ddof=1) / 10  # the check has power


def test_ou_svag_converges_to_sde_cumulants_and_sde_matches_euler_maruyama():
    model, eta, T = theory.OUModel(), 0.5, 1.0
    sde = theory.ou_sde_cumulants(model, eta=eta, T=T)
    far = theory.ou_svag_cumulants(model, eta=eta, l=2**16, T=T)
    for k in (1, 2, 3, 4):
        assert np.allclose(far[k], sde[k], rtol=1e-3, atol=1e-4)  # O(1/l) apart

    # torchsde Euler–Maruyama (with theory.SequentialBrownian) vs the OU closed form
    torchsde = theory.register_brownian()
    a = torch.tensor(model.a, dtype=torch.float64)
    L = torch.linalg.cholesky(torch.tensor(eta * theory.ou_noise_cumulant(model, 2)))

    class OU(torch.nn.Module):
        noise_type, sde_type = "general", "ito"

        def f(self, t, y):
            return -a * y

        def g(self, t, y):
            return L.expand(y.shape[0], 2, 2)

    n, dt = 20_000, 1 / 256
    bm = theory.SequentialBrownian(0.0, (n, 2), torch.Generator().manual_seed(0))
    y0 = torch.tensor(model.x0, dtype=torch.float64).expand(n, 2)
    x = torchsde.sdeint(OU(), y0, torch.tensor([0.0, T], dtype=torch.float64), method="euler",
                        dt=dt, bm=bm)[-1].numpy()
    assert np.all(np.abs(x.mean(0) - sde[1]) < Z * x.std(0) / math.sqrt(n) + 2 * dt)
    cov = np.cov(x.T)
    se = np.sqrt((sde[2] ** 2 + np.outer(np.diag(sde[2]), np.diag(sde[2]))) / n)
    assert np.all(np.abs(cov - sde[2]) < Z * se + 2 * dt * np.abs(sde[2]))


def test_sequential_brownian_rejects_out_of_order_queries():
    bm = theory.SequentialBrownian(0.0, (3, 1), torch.Generator().manual_seed(0))
    dw = bm(0.0, 0.5)
    assert dw.shape == (3, 1)
    with pytest.raises(ValueError, match="consecutive"):
        bm(0.0, 0.5)


def test_weak_error_ou_frame_and_slope():
    S = theory.settings("smoke")
    df = theory.weak_error_ou(S)
    assert set(df.scheme) == {"svag", "sgd", "sde-gf"}
    sv = df[df.scheme == "svag"]
    # l = 1 SVAG is SGD at η
    sgd = df[(df.scheme == "sgd") & (df.eta == S.ou.eta)]
    assert np.allclose(sv[sv.l == 1].value.to_numpy(), sgd.value.to_numpy(), rtol=1e-12)
    slopes = theory.ou_slopes(df, S.ou.fit_min_l)
    assert all(-1.3 < v < -0.8 for v in slopes.values())


def test_double_well_small():
    s = theory.DoubleWellSettings(paths=500, l_values=(1, 2), dt_divisors=(4,))
    x1 = theory.double_well_svag(s, 1, seed=0)
    assert x1.shape == (500,) and torch.isfinite(x1).all()
    assert torch.equal(x1, theory.double_well_svag(s, 1, seed=0))  # seeded
    x = theory.double_well_em(s, 4, seed=0)
    assert x.shape == (500,) and torch.isfinite(x).all()


# ----------------------------------------------------------------------------- equilibrium


def test_normalized_linear_grads_autograd_invariance_orthogonality():
    s = theory.EquilibriumSettings(n=16, dim=3, classes=3)
    A, onehot = theory.normalized_linear_data(s)
    W = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    idx = torch.randint(16, (2, 1, 5), generator=torch.Generator().manual_seed(2))
    g = theory.normalized_linear_grads(W, A[idx], onehot[idx], 2.0)[:, 0]
    for c in range(2):
        w = W[c].clone().requires_grad_(True)
        logits = 2.0 * A[idx[c, 0]] @ (w / w.norm()).T
        loss = torch.nn.functional.cross_entropy(logits, onehot[idx[c, 0]].argmax(1))
        (ref,) = torch.autograd.grad(loss, w)
        assert torch.allclose(g[c], ref, rtol=1e-10, atol=1e-12)
    assert (g * W).sum((1, 2)).abs().max() < 1e-12  # ⟨∇L, x⟩ = 0 (Lemma E.7)
    g3 = theory.normalized_linear_grads(3 * W, A[idx], onehot[idx], 2.0)[:, 0]
    assert torch.allclose(g3, g / 3, rtol=1e-10)  # ∇L(cx) = ∇L(x)/c


@pytest.mark.parametrize("l", [1, 4])
def test_equilibrium_run_pathwise_norm_identity(l):
    """|x_{k+1}|² = (1 − ηλ/l)²|x_k|² + (η/l)²|g_k|² holds pathwise, so the window sums satisfy
    R_end − R_start = Σ_k [−(ηλ/l)(2 − ηλ/l)R_k + (η/l)²|g_k|²] exactly."""
    s = theory.EquilibriumSettings(chains=3, burn_in=0.5, window=0.5, n=32)
    r = theory.equilibrium_run(s, 4, l)
    lr = s.eta / l
    W = s.window_steps * l
    lhs = r["R_drift"] * r["R"] / W
    rhs = -lr * s.wd * (2 - lr * s.wd) * r["R"] + lr**2 * r["grad_sq"]
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)
    assert r["G"] > 0 and r["N"] > 0 and r["G_exact"] > 0 and r["N_exact"] > 0


def test_equilibrium_chains_give_the_means_and_standard_errors():
    s = theory.EquilibriumSettings(chains=4, burn_in=0.5, window=0.5, n=32)
    r = theory.equilibrium_run(s, 4, 1)
    for k in ("R", "G", "N", "grad_sq"):
        assert r["chains"][k].shape == (4,)
        assert r["chains"][k].mean() == pytest.approx(r[k], rel=1e-12)
    S = dataclasses.replace(theory.settings("smoke"), equilibrium=s)
    df = theory.equilibrium(S)
    assert (df[["R_se", "G_se", "N_se", "lhs_se", "rhs_se", "gap_se"]] > 0).all().all()


def test_norm_identity_and_thm52_table():
    lhs, rhs = eq11_sides(2.0, 3.0, step_lr=0.5, wd=0.1)
    assert lhs == pytest.approx((2 - 0.05) * 0.1 * 2.0) and rhs == pytest.approx(1.5)
    df = pd.DataFrame([dict(algorithm="sgd", B=4, eta=0.5, wd=0.1, R=2.0, G=1.0, N=1.0),
                       dict(algorithm="svag", B=4, eta=0.5, wd=0.1, R=1.0, G=1.0, N=1.0)])
    t = theory.thm52_table(df).iloc[0]
    assert t.R_ratio == 2.0 and t.G_over_N == 1.0 and t.C_min == 2.0
    assert t.bound == pytest.approx(math.sqrt(2.0))
    assert t.R_ratio_pred == pytest.approx(2 / 1.95 * 2)


# ----------------------------------------------------------------------------- App. B.1


def test_lsr_pairs_share_the_exact_third_cumulant():
    s = theory.LSRSettings(paths=100_000, kappas=(1, 4), l_values=(1, 4))
    for kappa, l in ((1, 1), (4, 1), (1, 4)):
        x = theory.lsr_samples(s, kappa=kappa, l=l, seed=kappa + l)
        assert x.mean() == pytest.approx(-s.drift * s.T, abs=Z * x.std() / math.sqrt(len(x)))
        assert x.var() == pytest.approx(s.T * s.eta / s.batch_size, rel=0.03)
        se = theory.k3_se(x)
        assert abs(stats.kstat(x, 3) - theory.lsr_exact_k3(s, l)) < Z * se
    assert theory.lsr_exact_k3(s, 1) == pytest.approx(-2 * s.T * (s.eta / s.batch_size) ** 2)


def test_lsr_vs_sde_smoke_summary():
    df = theory.lsr_vs_sde(theory.settings("smoke"))
    assert list(df.kind) == ["sgd", "sgd", "svag", "svag", "sde"]
    stats_ = theory.lsr_summary(df)
    assert stats_["pairs_min_ks_p"] > 1e-3 and stats_["sde_min_k3_z"] > 3


# ----------------------------------------------------------------------------- App. B.3


def test_tail_index_on_stable_and_gaussian_samples():
    rng = np.random.default_rng(0)
    x = stats.levy_stable.rvs(1.5, 0.0, size=100_000, random_state=rng)
    assert theory.tail_index(x) == pytest.approx(1.5, abs=0.1)
    assert theory.tail_index(x, block=100) == pytest.approx(1.5, abs=0.1)
    assert theory.tail_index(rng.standard_normal(100_000)) == pytest.approx(2.0, abs=0.1)
    # anisotropic Gaussian: called heavy-tailed (App. B.3)
    aniso = rng.standard_normal(100_000) * np.exp(rng.standard_normal(100_000))
    assert theory.tail_index(aniso) < 1.7


@pytest.mark.parametrize("bad", [dict(x=[1.0, 2.0]), dict(x=np.ones(16), block=1),
                                 dict(x=np.ones(16), block=17), dict(x=np.zeros(16)),
                                 dict(x=np.full(16, np.nan)), dict(x=np.ones(16), block=2.0)])
def test_tail_index_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        theory.tail_index(**bad)


# ----------------------------------------------------------------------------- cache, settings


def test_store_roundtrip_checksums_and_no_train(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLIB_STORE", str(tmp_path))
    log = tmp_path / "results.jsonl"
    monkeypatch.setenv("PAPERLIB_RESULT_LOG", str(log))
    S = theory.TheorySettings("cpu", cache=True,
                              lemma=theory.LemmaSettings(n=3, batch_sizes=(1,), l_values=(2,)))
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")
    with pytest.raises(StaleResultError, match="lemma47-cpu.*not stored"):
        theory.lemma47(S)
    monkeypatch.delenv("PAPERLIB_NO_TRAIN")
    fresh = theory.lemma47(S)
    (d,) = (tmp_path / "theory").iterdir()
    assert d.name.startswith("lemma47-cpu-") and d == theory.result_dir("lemma47", S, "lemma")[0]
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "result.csv", "settings.json"]
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")
    pd.testing.assert_frame_equal(theory.lemma47(S), fresh)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["computed", "stored"]
    # a truncated result does not match its checksum: stale under NO_TRAIN, recomputed without
    csv = d / "result.csv"
    csv.write_bytes(csv.read_bytes()[:-20])
    with pytest.raises(StaleResultError, match="checksum"):
        theory.lemma47(S)
    monkeypatch.delenv("PAPERLIB_NO_TRAIN")
    pd.testing.assert_frame_equal(theory.lemma47(S), fresh)
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "computed"
    # other settings, other key: stale under NO_TRAIN; computing it replaces the old result
    S2 = dataclasses.replace(S, lemma=dataclasses.replace(S.lemma, l_values=(3,)))
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")
    with pytest.raises(StaleResultError):
        theory.lemma47(S2)
    monkeypatch.delenv("PAPERLIB_NO_TRAIN")
    theory.lemma47(S2)
    assert [p.name for p in (tmp_path / "theory").iterdir()] == \
        [theory.result_dir("lemma47", S2, "lemma")[0].name]


def test_committed_results_are_intact():
    """Every committed theory result is vouched for by its manifest (else nbval recomputes
    nothing and the notebooks fail with StaleResultError)."""
    from paperlib.paths import REPO
    from paperlib.theory.cache import load

    dirs = sorted((REPO / "data" / "theory").iterdir())
    assert len(dirs) == 6 and all(p.is_dir() and load(p) is not None for p in dirs)


def test_smoke_never_touches_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLIB_STORE", str(tmp_path))
    monkeypatch.setenv("PAPERLIB_NO_TRAIN", "1")
    theory.lemma47(theory.settings("smoke"))
    assert not (tmp_path / "theory").exists()


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_presets_build(preset):
    S = theory.settings(preset)
    assert S.preset == preset and S.cache == (preset != "smoke")


@pytest.mark.parametrize(
    "make, match",
    [(lambda: theory.settings("laptop"), "preset"),
     (lambda: theory.LemmaSettings(n=1), "n=1"),
     (lambda: theory.LemmaSettings(n=10, batch_sizes=(4,)), "enumerate"),
     (lambda: theory.LemmaSettings(l_values=(0,)), "l_values"),
     (lambda: theory.OUSettings(T=1.1), "integer"),
     (lambda: theory.OUSettings(fit_min_l=512), "fit_min_l"),
     (lambda: theory.DoubleWellSettings(p=1.5), "p=1.5"),
     (lambda: theory.EquilibriumSettings(batch_sizes=(3,)), "even"),
     (lambda: theory.EquilibriumSettings(eta=-1.0), "eta"),
     (lambda: theory.EquilibriumSettings(eta=2.0, wd=1.0), "eta \\* wd"),
     (lambda: theory.LSRSettings(kappas=(3,)), "integer"),
     (lambda: theory.TailSettings(anisotropy_claim=0.7), "anisotropy"),
     (lambda: theory.TailSettings(subset=8, batch_size=8), "batch_size"),
     (lambda: theory.ou_noise_cumulant(theory.OUModel(), 5), "order"),
     (lambda: theory.ou_svag_cumulants(theory.OUModel(), eta=0.5, l=0, T=1.0), "l must"),
     (lambda: theory.svag_increment_moments(torch.ones(3, 2), batch_size=0, l=2, eta=0.1),
      "batch_size"),
     (lambda: theory.lemma47_formulas(torch.ones(2), torch.eye(2), torch.zeros(2, 2, 2), l=2,
                                      eta=0.0), "eta"),
     (lambda: theory.loglog_slope([1.0], [1.0]), "2 points"),
     (lambda: theory.lemma47(theory.LemmaSettings()), "TheorySettings")],
)
def test_validation_errors_name_the_bad_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- claims


def test_claims_at_smoke_carry_intervals_and_verdicts():
    S = theory.settings("smoke")
    claims = [*theory.sde_claims(S, lemma=theory.lemma47(S), ou=theory.weak_error_ou(S),
                                 lsr=theory.lsr_vs_sde(S)),
              *theory.noise_claims(S, eq=theory.equilibrium(S),
                                   tails=theory.tail_index_experiment(S))]
    assert len(claims) == 18
    for c in claims:
        assert c.verdict in VERDICTS and c.interval.how
        assert c.interval.low <= c.measured <= c.interval.high or math.isnan(c.measured)
    by = {c.claim: c for c in claims}
    lemma = [c for c in claims if c.claim.startswith("Lemma 4.7")]
    assert all(c.interval.low == c.interval.high == c.measured for c in lemma)  # exact
    assert [c.verdict for c in lemma] == ["PASS", "PASS", "PASS", "FAIL"]  # printed (iii) fails
    ou = [c for c in claims if c.claim.startswith("Thm 4.3")]
    assert len(ou) == 2 and all(c.interval.low == c.interval.high for c in ou)  # exact
    z = by["App. B.1: LSR pairs vs κ = 1, largest |Δκ3| / SE"]
    assert z.interval.high - z.interval.low > 2  # a z statistic has unit noise
    for c in claims:
        if c.claim.startswith(("Eq. (1", "Thm 5.2", "R∞/R̄∞", "App. B.3")):
            assert c.interval.low < c.interval.high  # Monte Carlo: a real interval


def test_claims_thresholds_are_named_constants():
    from paperlib.theory import equilibrium_norms, lsr_sde, moments, tails, weak_ou

    assert moments.MAX_REL_ERR == 1e-6 and weak_ou.SLOPE_TOL == 0.15
    assert (lsr_sde.SAME_KS_P, lsr_sde.SAME_K3_Z, lsr_sde.SDE_KS_P, lsr_sde.SDE_K3_Z) == \
        (1e-3, 4.0, 1e-6, 10.0)
    assert equilibrium_norms.MAX_REL_GAP == 0.05 and equilibrium_norms.MIN_C_MARGIN == 0.0
    assert tails.GAUSSIAN_TOL == 0.1 and tails.HEAVY_BELOW == 1.8
