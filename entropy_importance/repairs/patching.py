"""``repairs()``: the repairs of Torch-Pruning 1.6 as one context manager, safe to use from several threads.

On the first entry (in any thread) each repaired Torch-Pruning function is replaced by a dispatcher; the
dispatcher runs the repair in threads that are inside a ``repairs()`` block and Torch-Pruning's original
everywhere else, so plain Torch-Pruning in other threads is never affected. The last exit (in any thread) puts
the originals back, also when the block ends with an exception. Entries nest.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch_pruning as tp
from torch_pruning.dependency import index_mapping, shape_infer
from torch_pruning.dependency.dependency import Dependency

from . import state
from .group_search import get_pruning_group
from .parameters import prune_with_extra_parameters, trace_unfrozen
from .widths import (
    concat_with_recorded_widths,
    init_with_exact_splits,
    reshape_or_barrier,
    split_with_exact_pieces,
    trace_recording_concats,
)

__all__ = ["repairs", "REPAIRED", "GROUP_TIME_LIMIT"]

#: seconds one group may take to form inside ``repairs()`` by default (ResNeSt's split-attention groups take up
#: to about 30 s on a loaded 2-core CPU; most groups well under a second)
GROUP_TIME_LIMIT = 60.0


def _trace(original, graph, model, *args, **kwargs):
    return trace_unfrozen(functools.partial(trace_recording_concats, original), graph, model, *args, **kwargs)


#: (owner, attribute, repair): each repair takes Torch-Pruning's original first, then its arguments
REPAIRED: tuple[tuple[object, str, Callable], ...] = (
    (shape_infer, "init_shape_information", init_with_exact_splits),
    (index_mapping, "update_split_index_mapping", split_with_exact_pieces),
    (index_mapping, "update_concat_index_mapping", concat_with_recorded_widths),
    (index_mapping, "update_reshape_index_mapping", reshape_or_barrier),
    (tp.DependencyGraph, "get_pruning_group", get_pruning_group),
    (tp.DependencyGraph, "_trace", _trace),
    (Dependency, "__call__", prune_with_extra_parameters),
)

_lock = threading.Lock()
_users = 0
_originals: list[Callable] = []


def _dispatcher(original: Callable, repair: Callable) -> Callable:
    @functools.wraps(original)
    def dispatch(*args, **kwargs):
        if state.active():
            return repair(original, *args, **kwargs)
        return original(*args, **kwargs)
    return dispatch


def _install() -> None:
    global _users
    with _lock:
        if _users == 0:
            _originals[:] = [vars(owner)[name] for owner, name, _ in REPAIRED]
            for (owner, name, repair), original in zip(REPAIRED, _originals, strict=True):
                setattr(owner, name, _dispatcher(original, repair))
        _users += 1


def _uninstall() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            for (owner, name, _), original in zip(REPAIRED, _originals, strict=True):
                setattr(owner, name, original)
            _originals.clear()


@contextmanager
def repairs(group_time_limit: float | None = GROUP_TIME_LIMIT) -> Iterator[None]:
    """Within the block, Torch-Pruning 1.6 builds dependency graphs, forms groups and prunes with these repairs
    (in the calling thread only; other threads keep plain Torch-Pruning):

    * exact split and concat widths, and no failure on a channel shuffle (:mod:`.widths`: CSP stages, class-token
      concats, ShuffleNet-V2);
    * a group search that follows each channel once (:mod:`.group_search`: Torch-Pruning's does not finish on
      RexNet, EfficientViT-M, FocalNet, ...), failing with :class:`GroupFormationTimeout` when one group takes
      longer than ``group_time_limit`` seconds (None: no limit), in any thread;
    * per-output-channel parameters of conv subclasses pruned with the weight, ``requires_grad`` kept, frozen
      models traced (:mod:`.parameters`).

    Everything the package does with Torch-Pruning (``prune()``, :class:`~entropy_importance.EntropyPruner`, the CLI,
    :func:`~entropy_importance.load_pruned`) runs inside it; wrap your own Torch-Pruning code in it to get the same
    groups::

        with entropy_importance.repairs():
            pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5)
            pruner.step()

    A model pruned inside the block must be reloaded inside it too (``load_pruned`` does). Torch-Pruning's functions
    are the originals again once no thread is inside a block.
    """
    if group_time_limit is not None and not (isinstance(group_time_limit, (int, float)) and group_time_limit > 0):
        raise ValueError(f"group_time_limit must be a number of seconds > 0 or None, got {group_time_limit!r}")
    _install()
    token = state.enter(group_time_limit)
    try:
        yield
    finally:
        state.leave(token)
        _uninstall()
