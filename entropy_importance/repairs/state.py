"""Per-thread state of the repairs: whether this thread is inside :func:`~.repairs`, and its group deadline."""

from __future__ import annotations

import threading
import time

__all__ = ["active", "GroupFormationTimeout", "group_deadline"]

_local = threading.local()


def _entries() -> list:
    entries = getattr(_local, "entries", None)
    if entries is None:
        entries = _local.entries = []
    return entries


def active() -> bool:
    """Whether the calling thread is inside a ``repairs()`` block."""
    return bool(getattr(_local, "entries", None))


def enter(group_time_limit: float | None) -> object:
    """Enter a block in this thread; returns the token that :func:`leave` takes. Blocks may end in any order (a
    generator suspended inside one is closed later), so each entry is removed by its token, not by position."""
    token = [group_time_limit]
    _entries().append(token)
    return token


def leave(token: object) -> None:
    entries = _entries()
    for k in range(len(entries) - 1, -1, -1):
        if entries[k] is token:
            del entries[k]
            return


class GroupFormationTimeout(RuntimeError):
    """Torch-Pruning took longer than the limit to form one group (``repairs(group_time_limit=...)``)."""


def group_deadline() -> float | None:
    """``time.monotonic()`` after which forming the group that starts now fails, or None (no limit): the limit of
    the innermost block open in this thread."""
    entries = getattr(_local, "entries", None)
    limit = entries[-1][0] if entries else None
    return None if limit is None else time.monotonic() + limit
