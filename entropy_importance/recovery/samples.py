"""Sample rows of a conv / linear layer: its input patches and its outputs at the same sampled positions.

A convolution ``y = conv(x)`` is, at every output position, a matrix product of the weights with the input patch
under the kernel; per group ``j``: ``y_j[p] = W_j · patch_j(x, p) + b_j`` with ``W_j`` of shape
``(out_channels / groups, in_channels / groups * kernel area)``. A linear layer is the same with one "position" per
row (token). Positions are sampled per example, the same ones for the pruned network's input and the unpruned
network's output, so that each row pairs an input the pruned layer sees with the output the unpruned layer gave.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LayerRows", "layer_rows", "supported"]


def supported(module: nn.Module) -> str | None:
    """None if ``module`` can be refitted, else why not."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d) and not module.transposed:
        if module.padding_mode != "zeros":
            return f"padding mode {module.padding_mode!r} is not supported"
        return None
    return f"{type(module).__name__} layers are not refitted (conv2d and linear are)"


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of a Conv2d, for integer and ``"same"`` / ``"valid"`` paddings."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):  # width first
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


class LayerRows:
    """Builds sample rows ``(n, groups, dim)`` / ``(n, groups, outputs)`` for one layer.

    Args:
        module: the pruned layer (its shape defines groups and dims).
        positions: positions (conv) or tokens (linear with a sequence dimension) sampled per example.
        intercept: append a column of ones (the layer's bias, or an intercept folded elsewhere).
    """

    def __init__(self, module: nn.Module, positions: int, intercept: bool) -> None:
        self.module, self.positions, self.intercept = module, positions, intercept
        if isinstance(module, nn.Linear):
            self.groups, self.outputs, self.dim = 1, module.out_features, module.in_features
        else:
            k = module.kernel_size[0] * module.kernel_size[1]
            self.groups = module.groups
            self.outputs = module.out_channels // module.groups
            self.dim = module.in_channels // module.groups * k
        self.dim += int(intercept)

    # --------------------------------------------------------------------------------------------- positions
    def sample(self, y: Tensor, generator: torch.Generator) -> Tensor | None:
        """Indices ``(N, P)`` into the flattened positions of output ``y``, or None to take every row."""
        if isinstance(self.module, nn.Linear):
            if y.dim() <= 2:
                return None
            n, per = y.shape[0], y[0].numel() // y.shape[-1]
        else:
            n, per = y.shape[0], y.shape[2] * y.shape[3]
        if per <= self.positions:
            return None
        return torch.randint(per, (n, self.positions), generator=generator).to(y.device)

    # --------------------------------------------------------------------------------------------- rows
    def input_rows(self, x: Tensor, idx: Tensor | None, out_hw: tuple[int, int] | None) -> Tensor:
        """Input rows ``(n, groups, dim)`` of input ``x`` at the sampled positions."""
        if isinstance(self.module, nn.Linear):
            rows = x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 2 else x[:, None]
            if idx is not None:
                rows = rows.gather(1, idx[:, :, None].expand(-1, -1, rows.shape[-1]))
            rows = rows.reshape(-1, 1, rows.shape[-1])
        else:
            rows = self._patches(x, idx, out_hw)
        if self.intercept:
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
        return rows

    def _patches(self, x: Tensor, idx: Tensor | None, out_hw: tuple[int, int]) -> Tensor:
        conv = self.module
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        ho, wo = out_hw
        n, c = x.shape[:2]
        if idx is None:
            idx = torch.arange(ho * wo, device=x.device).expand(n, -1)
        xp = F.pad(x, _padding(conv))
        oh, ow = idx // wo, idx % wo  # (N, P)
        rows = oh[:, :, None] * sh + torch.arange(kh, device=x.device) * dh  # (N, P, kh)
        cols = ow[:, :, None] * sw + torch.arange(kw, device=x.device) * dw  # (N, P, kw)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        patches = xp.permute(0, 2, 3, 1)[batch, rows[:, :, :, None], cols[:, :, None, :]]  # (N, P, kh, kw, C)
        p = patches.shape[1]
        patches = patches.reshape(n, p, kh, kw, conv.groups, c // conv.groups).permute(0, 1, 4, 5, 2, 3)
        return patches.reshape(n * p, conv.groups, (c // conv.groups) * kh * kw)

    def output_rows(self, y: Tensor, idx: Tensor | None, channels: Tensor | None) -> Tensor:
        """Output rows ``(n, groups, outputs)`` of output ``y`` (only ``channels`` of it, if given)."""
        if channels is not None:
            y = y.index_select(y.dim() - 1 if isinstance(self.module, nn.Linear) else 1, channels.to(y.device))
        if isinstance(self.module, nn.Linear):
            rows = y.reshape(y.shape[0], -1, y.shape[-1]) if y.dim() > 2 else y[:, None]
            if idx is not None:
                rows = rows.gather(1, idx[:, :, None].expand(-1, -1, rows.shape[-1]))
            return rows.reshape(-1, 1, rows.shape[-1])
        flat = y.flatten(2)  # (N, C, H*W)
        if idx is not None:
            flat = flat.gather(2, idx[:, None, :].expand(-1, flat.shape[1], -1))
        return flat.permute(0, 2, 1).reshape(-1, self.groups, self.outputs)

    # --------------------------------------------------------------------------------------------- weights
    def weights(self) -> Tensor:
        """The layer's weights as ``(groups, outputs, dim)`` (bias as the last column when it has one and the rows
        carry an intercept; zeros there otherwise)."""
        w = self.module.weight.detach().reshape(self.groups, self.outputs, -1).double()
        if self.intercept:
            bias = self.module.bias
            b = bias.detach().double().reshape(self.groups, self.outputs, 1) if bias is not None else \
                w.new_zeros(self.groups, self.outputs, 1)
            w = torch.cat([w, b], dim=2)
        return w

    def free(self) -> Tensor | None:
        """The unregularised coordinates: the intercept."""
        if not self.intercept:
            return None
        mask = torch.zeros(self.dim, dtype=torch.bool)
        mask[-1] = True
        return mask


def layer_rows(module: nn.Module, positions: int, intercept: bool) -> LayerRows:
    """:class:`LayerRows` for a supported layer (see :func:`supported`)."""
    reason = supported(module)
    if reason is not None:
        raise ValueError(reason)
    return LayerRows(module, positions, intercept)
