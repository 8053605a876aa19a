"""Reading layers' inputs and outputs in a forward pass that stops as soon as every layer wanted was seen."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from ..calibration.batches import call_model

__all__ = ["capture"]


class _Stop(Exception):
    """Raised from a hook once every layer wanted from this forward pass has been seen."""


def capture(model: nn.Module, modules: dict[str, nn.Module], inputs: Any, before: bool = False
            ) -> dict[str, tuple[Tensor, Tensor | None]]:
    """``{name: (input, output)}`` of ``modules`` in one forward pass of ``model`` on ``inputs``, stopped as soon as
    all were seen; with ``before`` the pass stops before the last of them runs and the outputs are None. The hooks
    are removed on every exit path.

    Raises:
        RuntimeError: a module the forward pass did not reach.
    """
    got: dict[str, tuple[Tensor, Tensor | None]] = {}

    def hook(name):
        def record(module, args, out=None):
            got[name] = (args[0], out)
            if len(got) == len(modules):
                raise _Stop

        return record

    handles = [m.register_forward_pre_hook(hook(n)) if before else m.register_forward_hook(hook(n))
               for n, m in modules.items()]
    try:
        call_model(model, inputs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(modules) - set(got))
    if missing:
        raise RuntimeError(f"layers {missing[:3]} were not reached by the forward pass")
    return got
