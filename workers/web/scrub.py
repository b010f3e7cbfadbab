"""Scrubber: takes the secrets out of everything the web view sends.

Every JSON body and every Server-Sent Event goes through one Scrubber, so a run config that
carries a Redis URL with its password, or a reason that quotes the secret, never reaches a page:
URLs lose their password, the token, the signing secret and the bus password are replaced
wherever they occur, and values of keys named like a secret are masked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
# scheme://user:password@ -> scheme://user:***@ (any scheme: redis, rediss, http, postgres...).
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/@\s:]*):[^/@\s]*@")
# A key whose name (or one of its "_", "-", "." parts) says it holds a secret.
_SECRET_KEY = re.compile(
    r"(?:^|[._\-])(?:password|passwd|secret|token|api_?key|credentials?)(?:$|[._\-])",
    re.IGNORECASE,
)


class Scrubber:
    """Masks `hidden` strings, URL passwords and secret-named values in JSON-able data."""

    def __init__(self, hidden: Iterable[str]) -> None:
        # Longest first: a secret that contains another is masked whole.
        self.hidden = sorted({h for h in hidden if h}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """`value` with URL passwords and the hidden strings masked."""
        value = _CREDENTIALS.sub(rf"\1:{MASK}@", value)
        for secret in self.hidden:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def value(self, data: Any) -> Any:
        """A copy of JSON-able `data` with strings scrubbed and non-finite numbers as None."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, Mapping):
            out = {}
            for key, item in data.items():
                name = self.text(str(key))
                secret_named = isinstance(item, str) and item and _SECRET_KEY.search(name)
                out[name] = MASK if secret_named else self.value(item)
            return out
        if isinstance(data, (list, tuple)):
            return [self.value(item) for item in data]
        if isinstance(data, bytes):
            return f"<{len(data)} bytes>"
        if isinstance(data, float) and not math.isfinite(data):
            return None  # JSON has no NaN: a gap in a curve, not a page that fails to parse
        return data
