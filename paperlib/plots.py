"""DataFrame → matplotlib Figure, and saving figures as figures/<id>.{pdf,png}: the training
figures (``fig1``, ``fig3``, ``fig4``, ``sampling``) and the theory figures (``theory_*``, from
the frames of :mod:`paperlib.theory`), with one set of style constants."""

from __future__ import annotations

from pathlib import Path

# No matplotlib.use(...) here: importing the library must not change the caller's backend
# (inline in Jupyter; matplotlib itself falls back to Agg where there is no display).
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import paths
from .theory import ou_slopes, thm52_table
from .theory.moments import MAX_REL_ERR
from .theory.tails import HEAVY_BELOW


def paper_style() -> None:
    """Paper-like panels: white grid, readable fonts, a colour-blind palette."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "lines.linewidth": 1.6})


def save_figure(fig, fig_id: str, fig_dir: str | Path | None = None) -> list[Path]:
    """Write ``<fig_dir>/<fig_id>.pdf`` and ``.png`` (fig_dir defaults to the repo's figures/)."""
    out = Path(fig_dir) if fig_dir else paths.FIGURES
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{fig_id}.pdf", out / f"{fig_id}.png"]
    # Fixed metadata keeps the files byte-stable across reruns with the same data.
    fig.savefig(files[0], metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    fig.savefig(files[1], dpi=150, metadata={"Software": None})
    return files


STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def _seed_mean(df, by: str, x: str, y: str):
    """Mean and min/max over seeds of ``y`` per (``by``, ``x``), rows with ``y`` present."""
    d = df.dropna(subset=[y])
    return d.groupby([by, x])[y].agg(["mean", "min", "max"]).reset_index()


def _lines(ax, df, by: str, x: str, y: str, label_fmt: str, order=None, smooth: int = 1):
    stats = _seed_mean(df, by, x, y)
    keys = order if order is not None else sorted(stats[by].unique())
    for i, key in enumerate(keys):
        s = stats[stats[by] == key].sort_values(x)
        if s.empty:
            continue
        mean = s["mean"].rolling(smooth, min_periods=1).mean()
        ax.plot(s[x], mean, linestyle=_style(i), label=label_fmt.format(key),
                marker=_marker(i), markevery=max(1, len(s) // 6), markersize=4)
        ax.fill_between(s[x], s["min"], s["max"], alpha=0.15)
    ax.set_xlabel(x.replace("_", " "))


def fig1(df, gap, main_batch: int):
    """Train accuracy (window mean), test accuracy and R vs steps; gap vs G/N."""
    paper_style()
    main = df[(df["batch_size"] == main_batch) | (df["algo"] == "gd")].copy()
    main["method"] = main["algo"].str.upper()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    order = ["SGD", "NGD", "GD"]
    _lines(axes[0], main, "method", "step", "train_acc", "{}", order, smooth=3)
    axes[0].set_ylabel("train accuracy (%)")
    _lines(axes[1], main, "method", "step", "test_acc", "{}", order)
    axes[1].set_ylabel("test accuracy (%)")
    _lines(axes[2], main, "method", "step", "R", "{}", order)
    axes[2].set_ylabel("R = |x|²")
    for ax in axes[:3]:
        ax.legend(title=f"B = {main_batch}")
    ax = axes[3]
    ax.errorbar(gap["G_over_N"], gap["gap_vs_gd"], yerr=gap["acc_sd"].fillna(0), marker="o",
                capsize=3, color="k")
    for _, r in gap.iterrows():
        ax.annotate(f"B={int(r['batch_size'])}", (r["G_over_N"], r["gap_vs_gd"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0, color="gray", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("G / N of SGD (constant-LR equilibrium)")
    ax.set_ylabel("SGD − GD final test acc (points)")
    fig.tight_layout()
    return fig


def fig3(per_b, info, C2: float = 2.0):
    """Final test error and G_t/N_t vs B, the C² threshold, predicted B* range, failure region."""
    paper_style()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    b = per_b["batch_size"]
    ax.plot(b, per_b["test_error"], "o-", color="C0", label="final test error (%)")
    diverged = per_b[per_b["diverged"] > 0] if "diverged" in per_b else per_b.iloc[:0]
    if len(diverged):  # no test error to draw: a cross at the top of the axis
        top = per_b["test_error"].max() * 1.05 if per_b["test_error"].notna().any() else 100
        ax.plot(diverged["batch_size"], [top] * len(diverged), "x", color="red",
                markersize=9, markeredgewidth=2, linestyle="none", label="diverged")
    if info.get("observed_failure_B") is not None:
        ax.axvspan(info["observed_failure_B"] / 1.4, b.max() * 1.4, color="red", alpha=0.12,
                   label="LSR failed (error > 1.2 × best" + (" or diverged)" if len(diverged)
                                                             else ")"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B (η = 0.8 · B / 128)")
    ax.set_ylabel("final test error (%)")
    ax2 = ax.twinx()
    ax2.plot(b, per_b["G_over_N"], "s--", color="C2", label="G_t / N_t")
    ax2.axhline(C2, color="k", linestyle=":", label=f"threshold C² = {C2:g}")
    ax2.set_yscale("log")
    ax2.set_ylabel("G_t / N_t")
    for key, ls in (("predicted_min", "-."), ("predicted_max", "--")):
        if not np.isfinite(info[key]):  # the baseline runs diverged: no prediction
            continue
        ax.axvline(info[key], color="C1", linestyle=ls,
                   label=f"{key.split('_')[1]} B* = B·C²(1 + N/G) = {info[key]:.0f} (Thm 5.6)")
    if np.isfinite(info.get("caption_min", np.nan)):  # the Fig 3 caption's form, beside it
        ax.axvline(info["caption_min"], color="0.5", linestyle=":",
                   label=f"min C²·B·N/G = {info['caption_min']:.0f} (Fig 3 caption)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax2.grid(False)
    fig.tight_layout()
    return fig


def fig4(df):
    """Test accuracy and train loss vs effective steps, one column per panel (B, η)."""
    paper_style()
    panels = sorted(df["batch_size"].unique())
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7.2), squeeze=False)
    for j, b in enumerate(panels):
        sub = df[df["batch_size"] == b]
        lr = sub["lr"].iloc[0]
        _lines(axes[0, j], sub, "l", "effective_step", "test_acc", "l = {:g}")
        axes[0, j].set_title(f"B = {b}, η = {lr:g}")
        axes[0, j].set_ylabel("test accuracy (%)")
        _lines(axes[1, j], sub, "l", "effective_step", "train_loss", "l = {:g}", smooth=3)
        axes[1, j].set_ylabel("train loss (window mean)")
        axes[0, j].legend(title="SVAG (l = 1: SGD)")
    fig.tight_layout()
    return fig


def sampling(df):
    paper_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    _lines(axes[0], df, "sampler", "step", "test_acc", "{}")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(title="sampler")
    _lines(axes[1], df, "sampler", "step", "train_loss", "{}", smooth=3)
    axes[1].set_ylabel("train loss (window mean)")
    fig.tight_layout()
    return fig


# --- theory (paperlib.theory): one figure per result, from the experiment's frame ----------------


def _axes(ncols: int = 2, width: float = 10.0, height: float = 3.8):
    return plt.subplots(1, ncols, figsize=(width, height))


def _marker(i: int):
    return MARKERS[i % len(MARKERS)]


def _style(i: int):
    return STYLES[i % len(STYLES)]


def theory_lemma47(df: pd.DataFrame):
    """Left: max relative error over B of each Lemma 4.7 moment vs l (printed (iii) included).
    Right: |E Δ^{⊗3}|_F and sqrt(E|Δ|⁸) vs l per B, against an l⁻² guide."""
    fig, (ax1, ax2) = _axes()
    worst = df.dropna(subset=["rel_err"]).groupby(["moment", "l"]).rel_err.max().reset_index()
    for i, (moment, d) in enumerate(worst.groupby("moment", sort=False)):
        ax1.plot(d.l, np.maximum(d.rel_err, 1e-17), marker=_marker(i), ls=_style(i),
                 label=moment)
    ax1.axhline(MAX_REL_ERR, color="k", lw=0.8, ls=":",
                label=f"claim threshold {MAX_REL_ERR:g}")
    ax1.set(xscale="log", yscale="log", xlabel="SVAG l", ylabel="max relative error over B",
            title="Lemma 4.7: enumeration vs formula")
    ax1.legend(fontsize=8)
    for i, (B, d) in enumerate(df.groupby("B")):
        t3, t4 = d[d.moment == "(iii)"], d[d.moment == "(iv)"]
        ax2.plot(t3.l, t3["norm"], marker="o", ls=_style(i), label=f"|E Δ⊗3|, B={B}")
        ax2.plot(t4.l, t4["norm"], marker="s", mfc="none", ls=_style(i),
                 label=f"sqrt(E|Δ|^8), B={B}")
    ls = np.array(sorted(df.l.unique()), dtype=float)
    top = df[df.moment.isin(["(iii)", "(iv)"])]["norm"].max()
    ax2.plot(ls, top * ls**-2.0, color="k", lw=0.8, ls=":", label="∝ l^-2")
    ax2.set(xscale="log", yscale="log", xlabel="SVAG l", ylabel="magnitude",
            title="(iii), (iv) are O(l^-2)")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def theory_weak_ou(df: pd.DataFrame, fit_min_l: int):
    """Left: SVAG's weak error vs l at fixed η with the fitted slope (Thm 4.3: ∀T, η ∃l).
    Right: SGD's weak error vs η, next to how far the SDE itself is from gradient flow
    (Li et al. 2019a: ∀T ∃η)."""
    fig, (ax1, ax2) = _axes()
    sv = df[df.scheme == "svag"]
    slopes = ou_slopes(df, fit_min_l)
    for i, (g, d) in enumerate(sv.groupby("g")):
        (line,) = ax1.plot(d.l, d.error, marker=_marker(i), ls="none",
                           label=f"g = {g}: slope {slopes[g]:.3f} (l ≥ {fit_min_l})")
        fit = d[d.l >= fit_min_l]
        coef = np.polyfit(np.log(fit.l), np.log(fit.error), 1)
        ls = np.array([fit.l.min(), fit.l.max()], dtype=float)
        ax1.plot(ls, np.exp(np.polyval(coef, np.log(ls))), color=line.get_color(),
                 ls=_style(i + 1))
    eta = sv.eta.iloc[0]
    noise = df[(df.scheme == "sde-gf") & np.isclose(df.eta, eta)]
    for i, (g, d) in enumerate(noise.groupby("g")):
        ax1.axhline(d.error.iloc[0], color="0.5", lw=0.8, ls=_style(i + 1),
                    label=f"SDE(η) vs gradient flow, g = {g}")
    ax1.set(xscale="log", yscale="log", xlabel=f"SVAG l (per-step LR η/l, η = {eta:g})",
            ylabel="|E g(x) − E g(X_T)|", title="Thm 4.3: ∀T, η ∃l: SVAG → SDE(η)")
    ax1.legend(fontsize=8)
    for i, (g, d) in enumerate(df[df.scheme == "sgd"].groupby("g")):
        ax2.plot(d.eta, d.error, marker=_marker(i), ls="-", label=f"SGD vs SDE(η), g = {g}")
    for i, (g, d) in enumerate(df[df.scheme == "sde-gf"].groupby("g")):
        ax2.plot(d.eta, d.error, marker=_marker(i), mfc="none", ls="--",
                 label=f"SDE(η) vs gradient flow, g = {g}")
    ax2.set(xscale="log", yscale="log", xlabel="SGD learning rate η",
            ylabel="weak error", title="∀T ∃η: SGD → SDE(η), and SDE(η) → GF alike")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def theory_weak_double_well(df: pd.DataFrame):
    """SVAG's weak error vs l on the double well (Monte Carlo, ±1 SE bars) against the finest
    Euler–Maruyama reference; the coarser EM reference's gap shows the reference's own error."""
    fig, ax = _axes(1, 5.6, 3.8)
    for i, (g, d) in enumerate(df[df.method == "svag"].groupby("g")):
        lower = np.minimum(d.error_se, 0.7 * d.error)
        ax.errorbar(d.l, d.error, yerr=[lower, d.error_se], marker=_marker(i), ls=_style(i),
                    capsize=3, label=f"SVAG, g = {g}")
    floor = float(df.error_se.min())  # the Monte Carlo resolution
    ax.axhspan(floor / 4, floor, color="0.88", label="below 1 SE (Monte Carlo noise)")
    em = df[(df.method == "em")].dropna(subset=["error"])
    for i, (g, d) in enumerate(em.groupby("g")):  # shown at the floor when below it
        ax.plot(d.l, np.maximum(d.error, floor / 2), marker="x", ls="none", ms=8,
                color="0.4" if i else "0.1",
                label=f"EM dt = η/{int(d.l.iloc[0])} vs finest EM, g = {g}")
    first = df[(df.method == "svag")].groupby("g").error.first().max()
    ls = np.array(sorted(df[df.method == "svag"].l.unique()), dtype=float)
    ax.plot(ls, first / ls, color="k", lw=0.8, ls=":", label="∝ 1/l")
    ax.set(xscale="log", yscale="log", ylim=(floor / 4, None), xlabel="SVAG l",
           ylabel="|E g(x) − E g(X_T)| ± 1 SE", title="Double well, x-dependent skewed noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def theory_equilibrium(df: pd.DataFrame):
    """Left: both sides of eq. (11) (SGD) and eq. (12) (SVAG, large l). Right: R∞/R̄∞ against
    SGD's G/N with the eqs. (11)–(12) prediction and Thm 5.2's bound on C."""
    fig, (ax1, ax2) = _axes()
    for i, (alg, d) in enumerate(df.groupby("algorithm")):
        label = "SGD, eq. (11)" if alg == "sgd" else f"SVAG l={int(d.l.iloc[0])}, eq. (12)"
        ax1.plot(d.rhs, d.lhs, marker=_marker(i), ls="none", mfc="none" if i else None,
                 label=label)
    lim = np.array([0.0, df[["lhs", "rhs"]].max().max() * 1.1])
    ax1.plot(lim, lim, color="k", lw=0.8, label="lhs = rhs")
    ax1.fill_between(lim, lim * 0.95, lim * 1.05, color="0.85", label="±5 %")
    ax1.set(xlim=lim, ylim=lim, xlabel="rhs: η(G + N)  |  ηN",
            ylabel="lhs: (2 − ηλ)λR  |  2λR", title="Equilibrium norm identities")
    ax1.legend(fontsize=8)
    t = thm52_table(df).sort_values("G_over_N")
    ax2.plot(t.G_over_N, t.R_ratio, marker="o", ls="-", label="measured R∞ / R̄∞")
    ax2.plot(t.G_over_N, t.R_ratio_pred, marker="x", ls="none",
             label="eqs. (11)–(12): 2(1 + G/N)N/((2 − ηλ)N̄)")
    xs = np.geomspace(t.G_over_N.min(), t.G_over_N.max(), 50)
    ax2.plot(xs, 1 + xs, ls="--", color="0.3", label="1 + G/N (if N∞ = N̄∞)")
    ax2.plot(t.G_over_N, t.C_min, marker="^", mfc="none", ls="none", label="C_min (eq. 8)")
    ax2.plot(xs, np.sqrt(1 + xs), ls=":", color="0.3", label="Thm 5.2: C ≥ sqrt(1 + G/N)")
    ax2.set(xscale="log", xlabel="SGD's G∞/N∞ (larger B →)", ylabel="ratio",
            title="SGD vs SDE equilibria (Thm 5.2)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def theory_lsr(df: pd.DataFrame):
    """Left: QQ plot of x_T for the LSR pairs (κB, κη) and large-l SVAG against the Itô SDE.
    Right: |κ3(x_T)| vs SVAG l against the LSR pairs (constant) and the SDE (0)."""
    fig, (ax1, ax2) = _axes()
    qcols = [c for c in df.columns if c.startswith("q")]
    ref = df[df.kind == "sde"][qcols].iloc[0].to_numpy()
    for i, (_, r) in enumerate(df[df.kind == "sgd"].iterrows()):
        ax1.plot(ref, r[qcols].to_numpy(dtype=float), marker=_marker(i), ls="none",
                 mfc="none" if i % 2 else None, label=f"SGD (κB, κη), κ = {int(r.kappa)}")
    last = df[df.kind == "svag"].iloc[-1]
    ax1.plot(ref, last[qcols].to_numpy(dtype=float), marker="*", ls="none",
             label=f"SVAG l = {int(last.l)}")
    lim = [ref.min(), ref.max()]
    ax1.plot(lim, lim, color="k", lw=0.8, label="Itô SDE (2)")
    ax1.set(xlabel="SDE quantile", ylabel="quantile of x_T",
            title="App. B.1: the LSR pairs agree, not with the SDE")
    ax1.legend(fontsize=8)
    sv = df[df.kind == "svag"]
    ax2.errorbar(sv.l, sv.k3.abs(), yerr=np.minimum(sv.k3_se, 0.999 * sv.k3.abs()),
                 marker="o", ls="none", capsize=3, label="SVAG (Monte Carlo ± 1 SE)")
    ax2.plot(sv.l, sv.k3_exact.abs(), ls="--", color="0.3", label="SVAG exact (3l − 1)/l²")
    pairs = df[df.kind == "sgd"]
    kappas = ", ".join(str(int(k)) for k in pairs.kappa)
    ax2.axhline(pairs.k3.abs().mean(), color="k", ls=":", label=f"every LSR pair, κ = {kappas}")
    ax2.set(xscale="log", yscale="log", xlabel="SVAG l at the base (B, η)",
            ylabel="|third cumulant of x_T|", title="Itô SDE: κ3 = 0")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def theory_tail_index(df: pd.DataFrame, anisotropy_claim: float):
    """Left: α̂ of Gaussian vectors vs anisotropy. Right: α̂ per case (every replicate)."""
    fig, (ax1, ax2) = _axes()
    gs = df[df.case == "gaussian"].groupby("anisotropy").alpha_hat.agg(["mean", "std"])
    ax1.errorbar(gs.index, gs["mean"], yerr=gs["std"], marker="o", capsize=3,
                 label="N(0, diag σ²), log σ_j ~ N(0, s²)")
    for ax in (ax1, ax2):
        ax.axhline(2.0, color="k", lw=0.8, label="α = 2 (Gaussian)")
        ax.axhline(HEAVY_BELOW, color="k", lw=0.8, ls=":",
                   label=f"claim threshold {HEAVY_BELOW:g}")
    ax1.set(xlabel="anisotropy s (std of log σ_j)", ylabel="tail index α̂ (mean ± sd)",
            title="Block-sum estimator on Gaussian vectors")
    ax1.legend(fontsize=8)
    cases = [("isotropic\nGaussian", (df.case == "gaussian") & (df.anisotropy == 0)),
             (f"Gaussian\ns = {anisotropy_claim:g}",
              (df.case == "gaussian") & (df.anisotropy == anisotropy_claim)),
             ("Gaussian,\nNGD diag", df.case == "gaussian-ngd-diag"),
             ("NGD noise\n(Gaussian)", df.case == "ngd"), ("SGD noise", df.case == "sgd")]
    for i, (_, mask) in enumerate(cases):
        v = df[mask].alpha_hat.to_numpy()
        jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
        ax2.plot(i + jitter, v, ls="none", marker=_marker(i), mfc="none", color="0.3")
        ax2.plot([i - 0.25, i + 0.25], [v.mean()] * 2, color="k", lw=2)
    ax2.set_xticks(range(len(cases)), [c[0] for c in cases], fontsize=8)
    ax2.set(ylabel="tail index α̂", title=f"d = {int(df.dim.iloc[0])}, K1 = {int(df.block.iloc[0])}")
    fig.tight_layout()
    return fig
