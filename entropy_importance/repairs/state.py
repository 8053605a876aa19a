"""Per-thread state of the repairs: whether this thread is inside :func:`~.repairs`, and its group deadline."""

from __future__ import annotations

import threading
import time

__all__ = ["active", "GroupFormationTimeout", "group_deadline"]

_local = threading.local()


def active() -> bool:
    """Whether the calling thread is inside a ``repairs()`` block."""
    return getattr(_local, "depth", 0) > 0


def enter(group_time_limit: float | None) -> tuple[int, float | None]:
    previous = (getattr(_local, "depth", 0), getattr(_local, "limit", None))
    _local.depth, _local.limit = previous[0] + 1, group_time_limit
    return previous


def leave(previous: tuple[int, float | None]) -> None:
    _local.depth, _local.limit = previous


class GroupFormationTimeout(RuntimeError):
    """Torch-Pruning took longer than the limit to form one group (``repairs(group_time_limit=...)``)."""


def group_deadline() -> float | None:
    """``time.monotonic()`` after which forming the group that starts now fails, or None (no limit)."""
    limit = getattr(_local, "limit", None)
    return None if limit is None else time.monotonic() + limit
