"""Noisy Gradient Descent (NGD), eq. (3) of Li, Malladi, Arora (2021), via per-example weights.

NGD takes x ← x − η∇L(x) + η Σ^{1/2}(x) z with z ~ N(0, I) and Σ the covariance of the SGD
minibatch gradient. On a finite training set of n examples with per-example losses ℓ_i and
gradients a_i = ∇ℓ_i, write ∇L = (1/n) Σ_i a_i and the population (1/n-normalized)
per-example covariance Σ₁ = (1/n) Σ_i (a_i − ∇L)(a_i − ∇L)ᵀ. With z ~ N(0, I_n) and

    w_i = 1/n + (z_i − z̄) / sqrt(n·B),

the weighted loss Σ_i w_i ℓ_i has gradient

    Σ_i w_i a_i = ∇L + Σ_i z_i (a_i − ∇L) / sqrt(n·B)      (because Σ_i (z_i − z̄) = 0,
                                                            and Σ_i (a_i − ∇L) = 0),

a Gaussian with mean ∇L and covariance Σ_i (a_i − ∇L)(a_i − ∇L)ᵀ / (n·B) = Σ₁ / B exactly,
without ever forming Σ^{1/2}. This is the authors' δ_i = 1 + sqrt(n/B)(z_i − z̄) on the mean loss.

Σ₁/B is the covariance of a batch-B gradient drawn WITH replacement. SGD batches drawn without
replacement have covariance Σ₁/B · (n − B)/(n − 1); pass ``finite_population=True`` to match
that instead (the noise part is scaled by sqrt((n − B)/(n − 1))). For n = 50 000, B = 125 the
factor is 0.9975.

Training-loop contract: draw the weights ONCE per step (the same z for every micro-batch of that
step, fresh z for the next step, e.g. ``seeding.generator(seed, STREAM_NGD, step)``), then
accumulate gradients of Σ_{i ∈ chunk} w_i ℓ_i over the chunks of :func:`split_chunks` with a
summed (not averaged) reduction. This is only exact for nets without batch coupling
(GroupNorm or no normalization; train-mode BatchNorm makes ℓ_i depend on the chunk) and
without random augmentation (Fig 1 turns it off).
"""

import math

import torch

from paperlib.validate import check_int

__all__ = ["gd_weights", "ngd_weights", "split_chunks"]


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")


def ngd_weights(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    finite_population: bool = False,
) -> torch.Tensor:
    """Per-example loss weights whose weighted gradient is one NGD gradient (eq. 3).

    w_i = 1/n + s · (z_i − z̄) / sqrt(n·B) with z ~ N(0, I_n) from ``generator``, where s = 1
    (noise covariance Σ₁/B, i.i.d./with-replacement batches) or, with ``finite_population``,
    s = sqrt((n − B)/(n − 1)) (noise covariance Σ₁/B · (n − B)/(n − 1), batches drawn without
    replacement). Then Σ_i w_i ∇ℓ_i = ∇L + ξ with ξ exactly Gaussian, E ξ = 0 and
    Cov ξ = s² Σ₁ / B, Σ₁ the 1/n-normalized per-example covariance (see the module docstring
    for the derivation). Σ_i w_i = 1 up to rounding (the deviations z_i − z̄ sum to zero).

    z is drawn in float64 on the generator's device (or ``device`` if no generator is given),
    the weights are computed in float64 and then cast to ``dtype`` and moved to ``device``, so
    the same generator state gives the same weights on every device up to the final cast.

    Args:
        n: the number of training examples (≥ 2).
        batch_size: B, the SGD batch size whose noise level is matched (≥ 1; may exceed N when
            ``finite_population`` is False, since Σ₁/B is defined for any B).
        generator: source of z; ``None`` uses torch's global RNG.
        dtype: floating dtype of the result.
        device: device of the result.
        finite_population: match the without-replacement covariance (requires B ≤ N).

    Returns:
        Tensor of shape ``[n]``.

    Raises:
        ValueError: if n < 2, batch_size < 1, batch_size > n with ``finite_population``, or
            ``dtype`` is not floating.
    """
    check_int("n", n, 2)
    check_int("batch_size", batch_size, 1)
    _check_float_dtype(dtype)
    scale = 1.0 / math.sqrt(n * batch_size)
    if finite_population:
        if batch_size > n:
            raise ValueError(
                f"batch_size must be in [1, n={n}] with finite_population=True, "
                f"got {batch_size}"
            )
        scale *= math.sqrt((n - batch_size) / (n - 1))
    z_device = generator.device if generator is not None else torch.device(device)
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=z_device)
    w = (z - z.mean()) * scale + 1.0 / n
    return w.to(device=device, dtype=dtype)


def gd_weights(
    n: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Per-example loss weights 1/n of full-batch GD: Σ_i w_i ∇ℓ_i = ∇L (eq. 3 without noise).

    Args:
        n: the number of training examples (≥ 1).
        dtype: floating dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape ``[n]`` filled with 1/N.

    Raises:
        ValueError: if n < 1 or ``dtype`` is not floating.
    """
    check_int("n", n, 1)
    _check_float_dtype(dtype)
    return torch.full((n,), 1.0 / n, dtype=dtype, device=device)


def split_chunks(n: int, chunk_size: int) -> list[slice]:
    """Contiguous slices covering range(n) in order, each of length ``chunk_size`` but the last.

    Used to accumulate Σ_i w_i ∇ℓ_i over micro-batches: Σ over chunks of Σ_{i∈chunk} w_i ∇ℓ_i
    equals the full sum (the weights are drawn once per step, for all n examples).

    Args:
        n: number of examples (≥ 0; n = 0 gives an empty list).
        chunk_size: maximal chunk length (≥ 1).

    Returns:
        ``[slice(0, c), slice(c, 2c), ..., slice(k·c, n)]`` with ceil(n / chunk_size) entries.

    Raises:
        ValueError: if n < 0 or chunk_size < 1.
    """
    check_int("n", n, 0)
    check_int("chunk_size", chunk_size, 1)
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
