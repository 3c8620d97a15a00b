"""A catalogue of the test problems the test files share (as torchsde's tests/problems.py).

* ``linear_regression``: ℓ_i(x) = ½(a_iᵀx − y_i)² at a fixed x, in float64, with the per-example
  gradients and the closed forms the estimators are checked against: ∇L, Σ₁ (the 1/n-normalized
  per-example covariance; a batch of B drawn with replacement has Σ₁/B, eq. 3), Tr Σ₁,
  G = |∇L|² (Sec. 5) and the third central moment Λ₁ (Lemma 4.7).
* ``Point``: ℓ_i(w) = ½|w − a_i|², whose per-example gradient is w − a_i (a population we set).
* small nets: ``tanh_mlp`` (optionally with GroupNorm or train-mode BatchNorm) and ``TinyGNNet``
  (a conv net for images without batch coupling).

Everything is seeded; nothing here draws from the global RNG except the net constructors, which
initialize like any ``nn.Module`` (wrap them in ``seeded`` for a fixed init that leaves the global
RNG alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

DT = torch.float64


# --- linear regression with closed-form moments ------------------------------------------------

@dataclass(frozen=True)
class LinearRegression:
    """½(a_iᵀx − y_i)² over n examples at the point ``x``; per-example gradient r_i a_i with
    residual r = Ax − y."""

    A: torch.Tensor  # [n, d]
    y: torch.Tensor  # [n]
    x: torch.Tensor  # [d], the point the gradients are taken at

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def residual(self) -> torch.Tensor:  # r = Ax − y, [n]
        return self.A @ self.x - self.y

    @property
    def per_example(self) -> torch.Tensor:  # ∇ℓ_i = r_i a_i, [n, d]
        return self.residual[:, None] * self.A

    @property
    def grad(self) -> torch.Tensor:  # ∇L = Aᵀr / n, [d]
        return self.A.T @ self.residual / self.n

    @property
    def sigma1(self) -> torch.Tensor:  # Σ₁ = Aᵀ diag(r²) A / n − ∇L∇Lᵀ, [d, d]
        r, grad = self.residual, self.grad
        return (self.A.T * r.square()) @ self.A / self.n - torch.outer(grad, grad)

    @property
    def trace_sigma1(self) -> float:  # Tr Σ₁ = mean_i |a_i|² r_i² − |∇L|²
        r = self.residual
        return float((self.A.square().sum(1) * r.square()).mean() - self.grad.square().sum())

    @property
    def G(self) -> float:  # G = |∇L|² (Sec. 5)
        return float(self.grad.square().sum())

    @property
    def lambda1(self) -> torch.Tensor:  # Λ₁ = (1/n) Σ_i (∇ℓ_i − ∇L)^{⊗3}, [d, d, d]
        c = self.per_example - self.grad
        return torch.einsum("ni,nj,nk->ijk", c, c, c) / self.n


def linear_regression(n: int, d: int, seed: int, *, near_minimum: bool = False
                      ) -> LinearRegression:
    """A seeded float64 problem: A, y ~ N(0, 1); x = 0.3 z, or with ``near_minimum`` the
    least-squares solution + 0.2 z (so the NSR is large, as late in training)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    if near_minimum:
        x = torch.linalg.lstsq(A, y).solution + 0.2 * torch.randn(d, generator=g, dtype=DT)
    else:
        x = 0.3 * torch.randn(d, generator=g, dtype=DT)
    return LinearRegression(A, y, x)


# --- a population we control --------------------------------------------------------------------

class Point(nn.Module):
    """ℓ_i(w) = ½|w − a_i|²: the per-example gradient is w − a_i (a population we control)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.w - a  # [b, d]


def point_loss(out: torch.Tensor) -> torch.Tensor:
    """Mean of ½|w − a_i|² over the batch, from ``Point``'s output [b, d]."""
    return 0.5 * out.square().sum(1).mean()


# --- small nets ---------------------------------------------------------------------------------

def tanh_mlp(d_in: int, hidden: int, d_out: int, *, norm: str | None = None) -> nn.Sequential:
    """Linear(d_in → hidden) → [GroupNorm(2, hidden) | BatchNorm1d(hidden)] → Tanh → Linear.

    ``norm``: None, "gn" (no batch coupling) or "bn" (train mode: every example's loss depends on
    the whole batch). float32, initialized from the global RNG like any module.
    """
    layers: list[nn.Module] = [nn.Linear(d_in, hidden)]
    if norm == "gn":
        layers.append(nn.GroupNorm(2, hidden))
    elif norm == "bn":
        layers.append(nn.BatchNorm1d(hidden))
    elif norm is not None:
        raise ValueError(f"norm must be None, 'gn' or 'bn', got {norm!r}")
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(hidden, d_out))


class TinyGNNet(nn.Module):
    """conv(3→8) → GroupNorm(2, 8) → ReLU → global avg pool → linear(8→10): no batch coupling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with the global RNG seeded to ``seed``, restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()
