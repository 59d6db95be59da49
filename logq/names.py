"""Validation of topic and group names, which become directory names on disk."""

from __future__ import annotations

from typing import Final

from logq.errors import InvalidNameError

MAX_NAME_LENGTH: Final = 200


def validate_name(name: object, kind: str) -> str:
    """Return `name` when it is a valid topic or group name, else raise InvalidNameError.

    A valid name is a non-empty str of at most 200 bytes in UTF-8 (file
    systems limit a name to 255 bytes) with no path
    separator, no control character, and not "." or "..". `kind` ("topic" or
    "group") appears in the error message.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be a str, got {type(name).__name__} {name!r}")
    problem = _name_problem(name)
    if problem:
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: {problem}; use letters, digits, '.', '-' or '_'"
        )
    return name


def _name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8 text"
    if size > MAX_NAME_LENGTH:
        return f"it is {size} bytes long in UTF-8, the maximum is {MAX_NAME_LENGTH}"
    if name in (".", ".."):
        return "'.' and '..' name directories"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "it contains a control character"
    if name != name.strip():
        return "it starts or ends with white space"
    return None
