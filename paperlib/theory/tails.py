"""App. B.3: the block-sum tail-index estimator calls Gaussian noise heavy-tailed (anisotropic
Gaussian vectors and NGD's exactly Gaussian noise get α̂ well below 2, like SGD's noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .. import seeding
from ..claims import Claim, check, propagate, t_interval
from ..validate import is_int
from .cache import cached
from .settings import DT, TailSettings, TheorySettings

GAUSSIAN_TOL = 0.1  # claim (a): |mean α̂ − 2| ≤ this for isotropic Gaussian vectors
HEAVY_BELOW = 1.8  # claims (b), (c): mean α̂ < this, "heavy-tailed" (α = 2 is Gaussian)


def tail_index(x, block: int | None = None) -> float:
    """Block-sum tail-index estimator (Mohammadi et al. 2015, as used by Şimşekli et al. 2019).

    With K = K1·K2 samples X_j and Y_i the sums of K2 consecutive blocks of K1 X's,

        α̂ = ( (1/log K1) · ( (1/K2) Σ_i log|Y_i| − (1/K) Σ_j log|X_j| ) )⁻¹.

    For i.i.d. symmetric α-stable X, Y =_d K1^{1/α} X, so 1/α̂ is unbiased; for i.i.d. Gaussian
    X it is 2. The samples are the entries of ``x`` (e.g. the coordinates of one noise vector);
    the trailing len(x) − K1·K2 entries are dropped.

    Args:
        x: array-like of K ≥ 4 real samples (flattened).
        block: K1 ≥ 2 (default ⌊sqrt(K)⌋), with K2 = ⌊K / K1⌋ ≥ 1.

    Returns:
        α̂ as a float (inf if the difference of log-means is ≤ 0).

    Raises:
        ValueError: fewer than 4 samples, a bad block size, or non-finite / zero samples.
    """
    X = np.asarray(x, dtype=np.float64).ravel()
    if X.size < 4:
        raise ValueError(f"tail_index needs at least 4 samples, got {X.size}")
    K1 = int(math.isqrt(X.size)) if block is None else block
    if not is_int(K1) or not 2 <= K1 <= X.size:
        raise ValueError(f"block must be an integer in [2, {X.size}], got {block!r}")
    K2 = X.size // K1
    X = X[: K1 * K2]
    if not np.all(np.isfinite(X)) or np.any(X == 0):
        raise ValueError("tail_index needs finite, nonzero samples")
    Y = X.reshape(K2, K1).sum(1)
    diff = (np.mean(np.log(np.abs(Y))) - np.mean(np.log(np.abs(X)))) / math.log(K1)
    return float(1 / diff) if diff > 0 else math.inf


def net_per_example_grads(s: TailSettings) -> torch.Tensor:
    """Per-example gradients ``[N, d]`` (float64) of the GroupNorm convnet at its seeded init on
    ``s.subset`` examples of the synthetic data set at ``s.resolution`` px."""
    import torch.nn.functional as F

    from ..data import load_dataset, prepare
    from ..models import build_model
    from ..nsr import per_example_grads

    data = prepare(load_dataset("synthetic"), subset=s.subset, resolution=s.resolution,
                   seed=s.seed, dtype=DT)
    model = build_model("convnet", norm="gn", seed=s.seed).to(DT)
    return per_example_grads(model, None, data.train_x, data.train_y, F.cross_entropy,
                             chunk_size=128)


@cached("tail-index", "tail")
def tail_index_experiment(S: TheorySettings) -> pd.DataFrame:
    """App. B.3: α̂ (:func:`tail_index`, K1 = ⌊sqrt d⌋) of ``vectors`` noise vectors per case,
    all of dimension d = the convnet's parameter count (less any parameter whose gradient is 0
    for every example, e.g. a dead unit on a tiny subset):

    * "gaussian": N(0, diag σ²) with log σ_j ~ N(0, s²), s = ``anisotropy`` (s = 0: isotropic);
    * "ngd": NGD noise Σ_i (w_i − 1/N)∇ℓ_i (``paperlib.ngd.ngd_weights``): exactly Gaussian,
      covariance Σ₁/B;
    * "sgd": g_B − ∇L for B examples drawn without replacement;
    * "gaussian-ngd-diag": N(0, diag(Σ₁)/B), the NGD noise's coordinate variances alone.
    """
    from ..ngd import ngd_weights

    s = S.tail
    per_ex = net_per_example_grads(s)
    per_ex = per_ex[:, (per_ex != 0).any(0)]  # drop parameters no example moves (log 0)
    n, d = per_ex.shape
    grad = per_ex.mean(0)
    sd = ((per_ex - grad).square().mean(0) / s.batch_size).sqrt()
    rows = []
    for r in range(s.vectors):
        gen = seeding.generator(s.seed, 71, r)
        for aniso in s.anisotropy:
            z = torch.randn(d, generator=gen, dtype=DT)
            scale = torch.exp(aniso * torch.randn(d, generator=gen, dtype=DT))
            rows.append(dict(case="gaussian", anisotropy=aniso, replicate=r,
                             alpha_hat=tail_index((z * scale).numpy())))
        w = ngd_weights(n, s.batch_size, generator=gen)
        rows.append(dict(case="ngd", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index(((w - 1 / n) @ per_ex).numpy())))
        idx = torch.randperm(n, generator=gen)[: s.batch_size]
        rows.append(dict(case="sgd", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index((per_ex[idx].mean(0) - grad).numpy())))
        z = torch.randn(d, generator=gen, dtype=DT)
        rows.append(dict(case="gaussian-ngd-diag", anisotropy=np.nan, replicate=r,
                         alpha_hat=tail_index((z * sd).numpy())))
    df = pd.DataFrame(rows)
    df["dim"], df["block"] = d, math.isqrt(d)
    return df


def tail_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of α̂ per case, labelled "gaussian s=<s>" for the
    Gaussian cases and by the case name otherwise."""
    label = df.case.where(df.anisotropy.isna(),
                          "gaussian s=" + df.anisotropy.map(lambda v: f"{v:g}"))
    out = df.assign(label=label).groupby("label", sort=False).alpha_hat
    return out.agg(["mean", "std", "count"]).reset_index()


def tail_claims(df: pd.DataFrame, s: TailSettings) -> list[Claim]:
    """App. B.3: isotropic Gaussian α̂ ≈ 2 (within GAUSSIAN_TOL); anisotropic Gaussian, NGD and
    SGD noise α̂ < HEAVY_BELOW. Each mean α̂ is over ``s.vectors`` independent noise vectors
    (t interval, vectors − 1 df); the net's initialization and data subset are fixed (one net,
    not resampled)."""
    summary = tail_summary(df).set_index("label")
    seeds = f"{s.vectors} vectors of d = {int(df.dim.iloc[0])}"

    def est(label):
        r = summary.loc[label]
        return float(r["mean"]), float(r["std"]) / math.sqrt(r["count"]), int(r["count"]) - 1

    def mean_row(text, paper, label):
        m, se, dof = est(label)
        return check(text, paper, m, "<", HEAVY_BELOW, seeds=seeds,
                     interval=t_interval(m, se, dof if dof >= 1 else None,
                                         f"mean ± t SE over {dof + 1} vectors ({dof} df)"))

    m0, se0, dof0 = est("gaussian s=0")
    iso = propagate(lambda a: np.abs(a - 2), {"a": (m0, se0)}, dof0 if dof0 >= 1 else None,
                    f"mean α̂ ± t SE over {dof0 + 1} vectors ({dof0} df), then |· − 2|")
    return [
        check("App. B.3 (a): |mean α̂ − 2|, isotropic Gaussian", "α = 2", abs(m0 - 2), "<=",
              GAUSSIAN_TOL, seeds=seeds, interval=iso),
        mean_row(f"App. B.3 (b): mean α̂, anisotropic Gaussian (s = {s.anisotropy_claim:g})",
                 "α̂ < 2 although Gaussian", f"gaussian s={s.anisotropy_claim:g}"),
        mean_row("App. B.3 (c): mean α̂, NGD noise (exactly Gaussian)", "α̂ < 2 although Gaussian",
                 "ngd"),
        mean_row("App. B.3 (c): mean α̂, SGD noise", "called heavy-tailed (Şimşekli et al.)",
                 "sgd"),
    ]
