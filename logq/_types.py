"""Type aliases shared across the public API."""

from __future__ import annotations

from typing import Any, TypeAlias

Headers: TypeAlias = dict[str, str]
# bytes are stored as they are; any other value is encoded as JSON with orjson.
Value: TypeAlias = Any
Key: TypeAlias = str | bytes
