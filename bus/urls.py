"""Bus URL helpers that need no transport library."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """Return `url` with its password replaced by '***', for error messages and logs."""
    try:
        parts = urlsplit(url)
        password, user, host, port = parts.password, parts.username, parts.hostname, parts.port
    except ValueError:  # e.g. a non-numeric port: show nothing after the scheme
        return url.split("://", 1)[0] + "://***"
    if password is None:
        return url
    netloc = f"{user or ''}:***@{host or ''}" + (f":{port}" if port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))
