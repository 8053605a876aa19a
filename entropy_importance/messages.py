"""One-line error messages: the first line of an exception, for errors that are printed on one line."""

from __future__ import annotations

__all__ = ["first_line"]


def first_line(error: BaseException, limit: int | None = None, with_type: bool = False) -> str:
    """The first non-empty line of ``str(error)`` (the exception's type name when the message is empty).

    ``with_type`` prefixes the type name (``"ValueError: ..."``); ``limit`` cuts the result to that many
    characters.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if with_type or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if limit is None else text[:limit]
