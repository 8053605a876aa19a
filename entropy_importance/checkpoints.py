"""State-dict checkpoints: read one from a file and load it into a model, with one-line errors that name the file
and the fix (shared by ``entropy-prune --checkpoint`` and the recipes' ``--checkpoint``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from .messages import first_line

__all__ = ["CheckpointError", "read_state_dict", "load_checkpoint"]

#: keys under which training scripts commonly nest the state dict
_NESTED = ("model", "state_dict")
#: prefix that ``DistributedDataParallel`` adds to every key
_DDP_PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not a state dict, or of another architecture."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a plain one, or one nested under ``"model"`` / ``"state_dict"`` (as training
    scripts save it), with a ``DistributedDataParallel`` ``module.`` prefix removed. Read with
    ``weights_only=True`` on CPU; nothing is built.

    Raises:
        CheckpointError: the file does not exist, cannot be read by ``torch.load``, or holds no state dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist: give the path of a state dict saved by torch.save")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(e, 160, with_type=True)}): give a "
                              "state dict saved by torch.save") from None
    state = payload
    if isinstance(payload, Mapping):
        for key in _NESTED:
            if isinstance(payload.get(key), Mapping):
                state = payload[key]
                break
    if not isinstance(state, Mapping) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"checkpoint {path} is not a state dict (a mapping of parameter names to tensors, "
                              "plain or under 'model' / 'state_dict')")
    return {k.removeprefix(_DDP_PREFIX): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                    what: str = "model of this architecture", path: str | os.PathLike | None = None) -> nn.Module:
    """Load ``checkpoint`` (a file, read by :func:`read_state_dict`, or a state dict it returned) into ``model``
    and return ``model``. ``what`` describes the model in the error (e.g. ``"cifar-vgg16 with 10 classes"``);
    ``path`` names the file when ``checkpoint`` is an already read state dict.

    Raises:
        CheckpointError: the file cannot be used (see :func:`read_state_dict`), or its tensors do not fit
            ``model`` (the counts of missing, unexpected and mis-shaped tensors and one example); ``model`` is
            then unchanged.
    """
    if isinstance(checkpoint, Mapping):
        state, name = dict(checkpoint), path if path is not None else "(state dict)"
    else:
        state, name = read_state_dict(checkpoint), checkpoint
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(f"checkpoint {name} is not a {what}: {len(missing)} missing, {len(unexpected)} "
                              f"unexpected, {len(wrong)} mis-shaped tensors (e.g. {example!r}); give a checkpoint "
                              f"of {what}")
    model.load_state_dict(state)
    return model
