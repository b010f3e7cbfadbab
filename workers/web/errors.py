"""The error `trainer web` raises for options or a setting it cannot use."""

from __future__ import annotations


class WebError(Exception):
    """The web view cannot start as asked; the message says what to change."""
