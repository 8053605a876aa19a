"""Ridge least squares for one layer, from normal equations accumulated in float64 over calibration batches."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NormalEquations", "SolveError"]


class SolveError(ValueError):
    """The normal equations cannot be solved (non-finite activations, or no usable samples)."""


class NormalEquations:
    """For a layer of ``groups`` independent blocks, each mapping ``dim`` inputs to ``outputs`` outputs, the sums
    ``G_j = sum x xᵀ``, ``B_j = sum x yᵀ`` and ``Y_j = sum ||y||²`` over sample rows ``x`` (inputs, an intercept
    column included by the caller) and ``y`` (target outputs), so that for weights ``W_j`` (``outputs x dim``)

        E(W) = sum_j sum ||W_j x - y||² = sum_j tr(W_j G_j W_jᵀ) - 2 tr(W_j B_j) + Y_j

    and the ridge solution towards the current weights ``W0``,

        W* = argmin E(W) + lambda_j ||(W - W0) D||²,   (G_j + lambda_j D²) W_jᵀ = B_j + lambda_j D² W0_jᵀ,

    with ``lambda_j = ridge * trace(G_j) / dim`` and ``D`` the diagonal that is 0 on free coordinates (the
    intercept) and 1 elsewhere. Since ``W0`` is feasible, ``E(W*) <= E(W0)``: the fit never makes the layer worse on
    the calibration samples (He et al. 2017 "Channel pruning"; ThiNet, Luo et al. 2017)."""

    def __init__(self, groups: int, dim: int, outputs: int, device: torch.device | str = "cpu") -> None:
        self.G = torch.zeros(groups, dim, dim, dtype=torch.float64, device=device)
        self.B = torch.zeros(groups, dim, outputs, dtype=torch.float64, device=device)
        self.Y = torch.zeros(groups, dtype=torch.float64, device=device)
        self.samples = 0

    def add(self, x: Tensor, y: Tensor) -> None:
        """Add sample rows: ``x`` of shape ``(n, groups, dim)``, ``y`` of shape ``(n, groups, outputs)``."""
        x = x.to(self.G.device, torch.float64).transpose(0, 1)  # (g, n, d)
        y = y.to(self.G.device, torch.float64).transpose(0, 1)  # (g, n, o)
        self.G += x.transpose(1, 2) @ x
        self.B += x.transpose(1, 2) @ y
        self.Y += y.square().sum(dim=(1, 2))
        self.samples += x.shape[1]

    def merged(self, other: NormalEquations) -> NormalEquations:
        """The equations of both sample sets together."""
        both = NormalEquations.__new__(NormalEquations)
        both.G, both.B, both.Y = self.G + other.G, self.B + other.B, self.Y + other.Y
        both.samples = self.samples + other.samples
        return both

    def finite(self) -> bool:
        return bool(torch.isfinite(self.G).all() and torch.isfinite(self.B).all() and torch.isfinite(self.Y).all())

    def energy(self) -> float:
        """``sum ||y||²``: the target's energy."""
        return float(self.Y.sum())

    def error(self, w: Tensor) -> float:
        """``E(w)`` for weights of shape ``(groups, outputs, dim)``."""
        w = w.to(self.G.device, torch.float64)
        quad = torch.einsum("god,gde,goe->", w, self.G, w)
        cross = torch.einsum("god,gdo->", w, self.B)
        return float(quad - 2 * cross + self.Y.sum())

    def solve(self, w0: Tensor, ridge: float, free: Tensor | None = None) -> Tensor:
        """The ridge solution (shape of ``w0``: ``(groups, outputs, dim)``), in float64. ``free``: a boolean mask
        of the ``dim`` coordinates that are not regularised (the intercept).

        Raises:
            SolveError: non-finite sums, or a system that stays singular (no samples, all-zero inputs).
        """
        if not self.finite():
            raise SolveError("the calibration activations reaching this layer are NaN or Inf")
        groups, dim, _ = self.B.shape
        w0 = w0.to(self.G.device, torch.float64)
        d2 = torch.ones(dim, dtype=torch.float64, device=self.G.device)
        if free is not None:
            d2[free.to(self.G.device)] = 0.0
        scale = torch.diagonal(self.G, dim1=1, dim2=2).mul(d2).sum(dim=1) / d2.sum().clamp(min=1)  # (g,)
        for boost in (1.0, 1e2, 1e4):
            lam = (ridge * boost * scale).clamp(min=torch.finfo(torch.float64).tiny)[:, None, None]
            a = self.G + lam * torch.diag_embed(d2).expand(groups, dim, dim)
            rhs = self.B + lam * d2[None, :, None] * w0.transpose(1, 2)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info.abs().max()) == 0:
                return torch.cholesky_solve(rhs, chol).transpose(1, 2)
        raise SolveError("the normal equations are singular (no samples, or inputs that are all zero)")
