"""Gradient signal G, noise N and the noise-to-signal ratio N/G of Section 5 (eqs. 8-15).

Definitions (Definition 5.1 and Sec. 5.2): at a point x with full-batch gradient ∇L,

    G = |∇L(x)|²,    N = Tr Σ_B(x)  (covariance of one batch-B gradient),    R = |x|²,

and the noise-to-signal ratio is N/G. The theory (Thms 5.2, 5.5, 5.6) uses their equilibrium
means G_∞, N_∞, R_∞, estimated by averaging per-step estimates over a window of steps
(:class:`paperlib.windows.NSRWindow`, :func:`paperlib.windows.block_summary`).

Finite-population facts used throughout. Let the training set have n examples with per-example
gradients a_i, mean ∇L and population covariance Σ₁ = (1/n) Σ_i (a_i − ∇L)(a_i − ∇L)ᵀ (1/n
normalization). For the mean g_b of b examples

* drawn i.i.d. with replacement:        Cov g_b = Σ₁ / b;
* drawn without replacement:            Cov g_b = Σ₁ / b · (n − b)/(n − 1);
* two disjoint batches of one without-replacement draw (e.g. two halves of an SGD batch, or
  SVAG's two halves of a 2B slice of a permutation): Cov(g_b, g'_b) = −Σ₁/(n − 1), because
  distinct positions of a without-replacement draw have Cov(a_I, a_J) = −Σ₁/(n − 1).

So N at batch size B is Tr Σ₁ / B (with replacement) or Tr Σ₁ / B · (n − B)/(n − 1) (without;
all of the project's samplers but "replacement" draw each batch without replacement), see
:func:`noise_trace`. The relative difference matters for small training subsets; for the
signal estimate it matters even for n = 50 000 when the NSR is large (see :func:`direct_nsr`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from paperlib.constants import SAMPLERS
from paperlib.validate import check_int

__all__ = [
    "direct_nsr",
    "direct_nsr_from_norms",
    "noise_trace",
    "online_nsr",
    "per_example_grads",
    "per_example_nsr",
    "sampler_population",
]


def sampler_population(sampler: str, n: int) -> int | None:
    """The ``n`` argument of the estimators below for one of ``constants.SAMPLERS``.

    "replacement" draws batches i.i.d. with replacement (infinite-population formulas, ``None``);
    "reshuffle", "iid" and "fixed" draw each batch without replacement from the n examples
    (marginally over the random permutation for "fixed"), so they return ``n``.

    Args:
        sampler: one of ``constants.SAMPLERS``.
        n: the training-set size n (≥ 2).

    Returns:
        ``n`` or ``None``.

    Raises:
        ValueError: if ``sampler`` is not in ``SAMPLERS`` or n < 2.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    check_int("n", n, 2)
    return None if sampler == "replacement" else n


def noise_trace(trace_sigma1, batch_size: int, n: int | None = None):
    """N = Tr Σ_B from the per-example trace Tr Σ₁ (Sec. 5: Σ^B = Σ₁/B, plus the finite factor).

    N = Tr Σ₁ / B when ``n`` is None (batches drawn with replacement / infinite population) and
    N = Tr Σ₁ / B · (n − B)/(n − 1) when ``n`` is given (batches drawn without replacement from
    n examples; Σ₁ is the 1/n-normalized population covariance).

    Args:
        trace_sigma1: Tr Σ₁, a number ≥ 0 or a tensor of any shape (applied elementwise; tensors
            are not range-checked, to avoid a device sync).
        batch_size: B ≥ 1 (B ≤ n when n is given).
        n: the population size n ≥ 2, or None.

    Returns:
        Same type/shape as ``trace_sigma1``.

    Raises:
        ValueError: if batch_size < 1, n < 2, batch_size > n, or a numeric trace is negative
            or not finite.
    """
    check_int("batch_size", batch_size, 1)
    check_int("n", n, 2, allow_none=True)
    if n is not None and batch_size > n:
        raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size}")
    if not isinstance(trace_sigma1, torch.Tensor):
        t = float(trace_sigma1)
        if not math.isfinite(t) or t < 0.0:
            raise ValueError(f"trace_sigma1 must be a finite number >= 0, got {trace_sigma1!r}")
    return _noise_trace(trace_sigma1, batch_size, n)


def _noise_trace(trace_sigma1, batch_size: int, n: int | None):
    """:func:`noise_trace`'s arithmetic without its checks, on floats and tensors alike: the
    estimators below have validated the sizes, and their Tr Σ̂₁ from norms can come out a
    rounding error below 0 when the gradients are nearly equal."""
    out = trace_sigma1 / batch_size
    if n is not None:
        out = out * ((n - batch_size) / (n - 1))
    return out


def _check_sampling(k: int, b: int, batch_size: int, n: int | None, disjoint: bool) -> None:
    check_int("b", b, 1)
    check_int("batch_size", batch_size, 1)
    check_int("n", n, 2, allow_none=True)
    if n is None:
        return
    if batch_size > n:
        raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size}")
    if disjoint:
        if k * b > n:
            raise ValueError(
                f"disjoint batches need k*b <= n: k={k} batches of b={b} from n={n} examples"
            )
    elif b >= n:
        raise ValueError(
            f"independent without-replacement draws need b in [1, n-1={n - 1}] (at b = n every "
            f"draw is the full gradient and the noise cannot be estimated), got b={b}"
        )


def _raw_moments(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ĝ = (k|ḡ|² − mean_j |g_j|²)/(k − 1) and N̂ = mean_j |g_j|² − Ĝ, computed stably in float64.

    N̂ = Σ_j |g_j − ḡ|² / (k − 1) (the unbiased sample variance trace) and Ĝ = |ḡ|² − N̂ / k,
    which are algebraically identical to the expressions above.
    """
    g = grads.to(torch.float64)
    k = g.shape[-2]
    mean = g.mean(dim=-2, keepdim=True)
    n_raw = (g - mean).square().sum(dim=(-2, -1)) / (k - 1)
    g_raw = mean.squeeze(-2).square().sum(dim=-1) - n_raw / k
    return g_raw, n_raw


def _corrected(g_raw, n_raw, b: int, batch_size: int, n: int | None, disjoint: bool):
    if n is None:
        trace1 = n_raw * b
        g_hat = g_raw
    elif disjoint:
        trace1 = n_raw * (b * (n - 1) / n)
        g_hat = g_raw + trace1 / (n - 1)
    else:
        trace1 = n_raw * (b * (n - 1) / (n - b))
        g_hat = g_raw
    return g_hat, _noise_trace(trace1, batch_size, n)


def _raw_from_norms(sum_sq, mean_sq, k: int):
    """(Ĝ_raw, N̂_raw) from Σ_j |g_j|² and |ḡ|² of k gradients: the same float64 operations on
    Python floats (a monitor's per-step scalars, no tensor ops) and on tensors."""
    mean_j = sum_sq / k
    g_raw = (k * mean_sq - mean_j) / (k - 1)
    return g_raw, mean_j - g_raw


def direct_nsr(
    grads: torch.Tensor,
    b: int | None = None,
    batch_size: int | None = None,
    n: int | None = None,
    disjoint: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate (G, N) at a fixed point from k ≥ 2 minibatch gradients (the authors' estimator).

    With g_1..g_k the gradients of k batches of equal size b at the same x and ḡ their mean,

        Ĝ_raw = (k|ḡ|² − mean_j |g_j|²)/(k − 1),      N̂_raw = mean_j |g_j|² − Ĝ_raw
              = Σ_j |g_j − ḡ|²/(k − 1).

    Derivation: if the g_j are independent with mean ∇L and covariance V, E|ḡ|² = G + Tr V/k
    and E mean_j|g_j|² = G + Tr V, so E Ĝ_raw = G and E N̂_raw = Tr V: N at batch size b, for
    whatever way each batch is drawn. This is what is returned when ``b`` is None.

    If ``b`` is given, the estimate is converted to batch size ``batch_size`` (default ``b``)
    through Tr Σ₁ (see the module docstring), according to how the k batches were drawn:

    * ``n`` None (with replacement): V = Σ₁/b, so Tr Σ₁ = b · N̂_raw, Ĝ = Ĝ_raw.
    * ``n`` given, ``disjoint=False`` (k independent draws, each without replacement inside):
      V = Σ₁/b · (n − b)/(n − 1), so Tr Σ₁ = N̂_raw · b(n − 1)/(n − b), Ĝ = Ĝ_raw.
    * ``n`` given, ``disjoint=True`` (k disjoint batches of one without-replacement draw of kb
      examples, e.g. consecutive batches of one reshuffled epoch): additionally
      Cov(g_i, g_j) = −Σ₁/(n − 1) for i ≠ j, so E|ḡ|² = G + Tr V/k − (k − 1)Tr Σ₁/(k(n − 1)) and
      E Ĝ_raw = G − Tr Σ₁/(n − 1), E N̂_raw = Tr V + Tr Σ₁/(n − 1) = Tr Σ₁ · n/(b(n − 1)).
      Hence Tr Σ₁ = N̂_raw · b(n − 1)/n and Ĝ = Ĝ_raw + Tr Σ₁/(n − 1).
      The uncorrected Ĝ_raw is biased low by Tr Σ₁/(n − 1) = G · (b · NSR_b)/(n − 1) roughly,
      which is not small when the NSR is large.

    Then N̂ = noise_trace(Tr Σ₁, batch_size, n). All estimates are unbiased (Ĝ can be negative).

    Args:
        grads: tensor ``[..., k, d]`` of k ≥ 2 flattened minibatch gradients (leading dimensions
            are independent replicates). Computed in float64.
        b: the batch size of each gradient, or None (then ``batch_size`` and ``n`` must be None).
        batch_size: B, the batch size at which N is reported (default ``b``).
        n: the population size n ≥ 2 for without-replacement sampling, or None.
        disjoint: the k batches are disjoint parts of one without-replacement draw (needs
            k·b ≤ n; ignored when ``n`` is None).

    Returns:
        ``(G_hat, N_hat)``, float64 tensors of shape ``[...]``.

    Raises:
        ValueError: if grads is not at least 2-d with k ≥ 2, or the sizes are inconsistent
            (b, batch_size ≥ 1; batch_size ≤ n; k·b ≤ n when disjoint; b < n otherwise).
    """
    if not isinstance(grads, torch.Tensor) or grads.dim() < 2 or grads.shape[-2] < 2:
        shape = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads)
        raise ValueError(f"grads must be a tensor [..., k, d] with k >= 2, got {shape}")
    if b is None:
        if batch_size is not None or n is not None:
            raise ValueError(
                f"batch_size={batch_size!r} and n={n!r} need the gradients' batch size b"
            )
        return _raw_moments(grads)
    batch_size = b if batch_size is None else batch_size
    _check_sampling(grads.shape[-2], b, batch_size, n, disjoint)
    g_raw, n_raw = _raw_moments(grads)
    return _corrected(g_raw, n_raw, b, batch_size, n, disjoint)


def direct_nsr_from_norms(
    sum_sq,
    mean_sq,
    k: int,
    b: int,
    batch_size: int | None = None,
    n: int | None = None,
    disjoint: bool = False,
):
    """:func:`direct_nsr` from two scalars instead of the k gradients: Σ_j |g_j|² and |ḡ|².

    The k-sample estimator only needs mean_j |g_j|² = ``sum_sq`` / k and |ḡ|² = ``mean_sq``:
    Ĝ_raw = (k|ḡ|² − mean_j |g_j|²)/(k − 1), N̂_raw = mean_j |g_j|² − Ĝ_raw, then the same
    finite-population conversion as :func:`direct_nsr` (``n``, ``disjoint``). This is what a
    training loop can afford to keep: a few numbers per micro-batch or per DDP rank, never the
    k gradients (:mod:`paperlib.monitor`). Equal to :func:`direct_nsr` up to float rounding.

    Args:
        sum_sq: Σ_j |g_j|² over the k gradients (number or float tensor of any shape).
        mean_sq: |ḡ|² of their mean ḡ (same shape as ``sum_sq``).
        k: number of gradients, ≥ 2.
        b, batch_size, n, disjoint: as in :func:`direct_nsr` (b is required here).

    Returns:
        ``(G_hat, N_hat)``: Python floats when both inputs are numbers (the same float64
        operations in the same order, without tensor ops: what a monitor's step can afford),
        else float64 tensors of the inputs' shape.

    Raises:
        ValueError: k < 2, or the sizes are inconsistent (as :func:`direct_nsr`).
    """
    check_int("k", k, 2)
    batch_size = b if batch_size is None else batch_size
    _check_sampling(k, b, batch_size, n, disjoint)
    if isinstance(sum_sq, (int, float)) and isinstance(mean_sq, (int, float)):
        return _corrected(*_raw_from_norms(float(sum_sq), float(mean_sq), k), b, batch_size, n,
                          disjoint)
    s = torch.as_tensor(sum_sq, dtype=torch.float64)
    m = torch.as_tensor(mean_sq, dtype=torch.float64, device=s.device)
    return _corrected(*_raw_from_norms(s, m, k), b, batch_size, n, disjoint)


def online_nsr(
    g1: torch.Tensor,
    g2: torch.Tensor,
    b: int,
    batch_size: int,
    n: int | None = None,
    disjoint: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step estimate of (G, N at batch size B) from two batch-b gradients at the same point.

    This is :func:`direct_nsr` with k = 2, where Ĝ_raw = ⟨g1, g2⟩ and N̂_raw = |g1 − g2|²/2:

    * ``n`` None (i.i.d. with replacement): E⟨g1,g2⟩ = G, E|g1 − g2|²/2 = Tr Σ₁/b, so
      Ĝ = ⟨g1,g2⟩ and N̂ = |g1 − g2|²/2 · b/B.
    * ``n`` given, ``disjoint=True`` (g1, g2 are the two halves of one without-replacement draw
      of 2b examples: two halves of one SGD batch, or SVAG's two batches from one permutation):
      Var g_b = Σ₁/b · (n − b)/(n − 1) and Cov(g1, g2) = −Σ₁/(n − 1), so
      E|g1 − g2|²/2 = Tr Σ₁ · n/(b(n − 1)) and E⟨g1,g2⟩ = G − Tr Σ₁/(n − 1). Hence
      Tr Σ̂₁ = |g1 − g2|²/2 · b(n − 1)/n, Ĝ = ⟨g1,g2⟩ + Tr Σ̂₁/(n − 1),
      N̂ = noise_trace(Tr Σ̂₁, B, n).
    * ``n`` given, ``disjoint=False`` (two independent draws, each without replacement inside):
      E⟨g1,g2⟩ = G, E|g1 − g2|²/2 = Tr Σ₁/b · (n − b)/(n − 1), so
      Tr Σ̂₁ = |g1 − g2|²/2 · b(n − 1)/(n − b), Ĝ = ⟨g1,g2⟩, N̂ = noise_trace(Tr Σ̂₁, B, n).

    Both estimates are unbiased but very noisy for one step; average them over a window of steps
    (:class:`paperlib.windows.NSRWindow`, :func:`paperlib.windows.block_summary`). Ĝ can be
    negative.

    Args:
        g1, g2: flattened gradients ``[..., d]`` of the same shape (leading dims = replicates).
        b: batch size of each of g1, g2 (≥ 1).
        batch_size: B, the batch size at which N is reported (≥ 1, ≤ n if n is given).
        n: population size n ≥ 2 for without-replacement sampling, or None.
        disjoint: g1, g2 come from one without-replacement draw (needs 2b ≤ n); ignored if
            ``n`` is None.

    Returns:
        ``(G_hat, N_hat)``, float64 tensors of shape ``[...]``.

    Raises:
        ValueError: if the shapes differ or are 0-d, or the sizes are inconsistent.
    """
    if not isinstance(g1, torch.Tensor) or not isinstance(g2, torch.Tensor):
        raise ValueError("g1 and g2 must be tensors")
    if g1.shape != g2.shape or g1.dim() < 1:
        raise ValueError(
            f"g1 and g2 must have the same shape [..., d], got {tuple(g1.shape)} and "
            f"{tuple(g2.shape)}"
        )
    _check_sampling(2, b, batch_size, n, disjoint)
    return direct_nsr(torch.stack([g1, g2], dim=-2), b, batch_size, n, disjoint)


def per_example_nsr(
    per_example_grads: torch.Tensor, batch_size: int, without_replacement: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (G, N) at batch size B from all n per-example gradients (Sec. 5 definitions).

    G = |(1/n) Σ_i a_i|², Tr Σ₁ = (1/n) Σ_i |a_i − ∇L|² and
    N = noise_trace(Tr Σ₁, B, n if without_replacement else None).

    Args:
        per_example_grads: tensor ``[..., n, d]`` of per-example gradients, n ≥ 2 (float64
            inside; leading dimensions are independent replicates, e.g. parallel chains).
        batch_size: B ≥ 1 (≤ n when ``without_replacement``).
        without_replacement: whether SGD batches are drawn without replacement.

    Returns:
        ``(G, N)`` as float64 tensors of shape ``[...]``.

    Raises:
        ValueError: if the tensor is not at least 2-d with n ≥ 2 rows, or batch_size is out of
            range.
    """
    a = per_example_grads
    if not isinstance(a, torch.Tensor) or a.dim() < 2 or a.shape[-2] < 2:
        shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a)
        raise ValueError(f"per_example_grads must be a tensor [..., n, d] with n >= 2, got "
                         f"{shape}")
    n = a.shape[-2]
    check_int("batch_size", batch_size, 1)
    if without_replacement and batch_size > n:
        raise ValueError(f"batch_size must be in [1, n={n}] without replacement, got {batch_size}")
    a = a.to(torch.float64)
    mean = a.mean(dim=-2)
    trace1 = (a - mean.unsqueeze(-2)).square().sum(dim=-1).mean(dim=-1)
    return (mean.square().sum(dim=-1),
            noise_trace(trace1, batch_size, n if without_replacement else None))


def per_example_grads(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-example gradients ∇ℓ_i, flattened, via ``torch.func`` (functional_call + vmap(grad)).

    ℓ_i = loss_fn(model(x[i:i+1]), y[i:i+1]), each example forwarded on its own, so this is only
    the per-example gradient of the training loss for nets WITHOUT batch coupling (GroupNorm, no
    normalization, or BatchNorm in eval mode; train-mode BatchNorm raises inside vmap). Buffers
    are read from ``model``; parameters not in ``params`` are held fixed at the model's values.

    Args:
        model: the network.
        params: ``{name: tensor}`` of the parameters to differentiate (as in
            ``model.named_parameters()``), flattened in this mapping's order; None means every
            parameter with ``requires_grad``.
        x: inputs ``[n, ...]``.
        y: targets ``[n, ...]``.
        loss_fn: ``loss_fn(output, target) -> scalar`` on a batch of one example, e.g.
            ``torch.nn.functional.cross_entropy``.
        chunk_size: passed to ``vmap`` to bound memory (None: all examples at once).

    Returns:
        Tensor ``[n, d]`` with d = total number of entries of ``params``.

    Raises:
        ValueError: if x and y have different lengths or are empty, ``params`` is empty, or
            ``chunk_size`` < 1.
    """
    from torch.func import functional_call, grad, vmap

    if x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(
            f"x and y must have the same non-zero length, got {x.shape[0]} and {y.shape[0]}"
        )
    check_int("chunk_size", chunk_size, 1, allow_none=True)
    if params is None:
        params = {k: v for k, v in model.named_parameters() if v.requires_grad}
    params = {k: v.detach() for k, v in params.items()}
    if not params:
        raise ValueError("params must contain at least one tensor")
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, y)
    n = x.shape[0]
    return torch.cat([grads[k].reshape(n, -1) for k in params], dim=1)
