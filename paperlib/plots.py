"""DataFrame → matplotlib Figure, and saving figures as figures/<id>.{pdf,png}."""

from __future__ import annotations

from pathlib import Path

# No matplotlib.use(...) here: importing the library must not change the caller's backend
# (inline in Jupyter; matplotlib itself falls back to Agg where there is no display).
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


def paper_style() -> None:
    """Paper-like panels: white grid, readable fonts, a colour-blind palette."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "lines.linewidth": 1.6})


def save_figure(fig, fig_id: str, fig_dir: str | Path | None = None) -> list[Path]:
    """Write ``<fig_dir>/<fig_id>.pdf`` and ``.png`` (fig_dir defaults to the repo's figures/)."""
    out = Path(fig_dir) if fig_dir else FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{fig_id}.pdf", out / f"{fig_id}.png"]
    # Fixed metadata keeps the files byte-stable across reruns with the same data.
    fig.savefig(paths[0], metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    fig.savefig(paths[1], dpi=150, metadata={"Software": None})
    return paths


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
        ax.plot(s[x], mean, linestyle=STYLES[i % len(STYLES)], label=label_fmt.format(key),
                marker=MARKERS[i % len(MARKERS)], markevery=max(1, len(s) // 6), markersize=4)
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
                   label=f"{key.split('_')[1]} predicted B* = {info[key]:.0f}")
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
