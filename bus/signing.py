"""HMAC-SHA256 signatures on envelopes, so a trainer can refuse forged control signals."""

from __future__ import annotations

import hashlib
import hmac

from bus.codec import canonical_bytes
from bus.envelope import Envelope
from bus.errors import BusError

Secret = str | bytes


class InvalidSignature(BusError):
    """An envelope is unsigned, or its signature does not match the shared secret."""


def _key(secret: Secret) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    elif isinstance(secret, bytearray):
        secret = bytes(secret)
    elif not isinstance(secret, bytes):
        raise TypeError(f"signing secret must be str or bytes, got {type(secret).__name__}")
    if not secret:
        # An empty key makes every signature forgeable by anyone; refuse it rather than pretend.
        raise ValueError("signing secret must not be empty")
    return secret


def signature(env: Envelope, secret: Secret) -> str:
    """Return the hex HMAC-SHA256 of the envelope's canonical bytes (its `sig` is ignored)."""
    return hmac.new(_key(secret), canonical_bytes(env), hashlib.sha256).hexdigest()


def sign(env: Envelope, secret: Secret) -> Envelope:
    """Return a copy of `env` whose `sig` is its signature under `secret`."""
    return env.with_sig(signature(env, secret))


def verify(env: Envelope, secret: Secret) -> bool:
    """Return True if `env` carries a signature that matches `secret`."""
    if not isinstance(env.sig, str):
        return False
    expected = signature(env, secret).encode("ascii")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a forged sig may contain any.
    return hmac.compare_digest(expected, env.sig.encode("utf-8", "surrogatepass"))


class Verifier:
    """Accepts every envelope when no secret is configured, else only correctly signed ones."""

    def __init__(self, secret: Secret | None) -> None:
        self._key = None if secret is None else _key(secret)

    @property
    def enabled(self) -> bool:
        """True when a secret is configured and envelopes are actually checked."""
        return self._key is not None

    def problem(self, env: Envelope) -> str | None:
        """Return why `env` must be refused, or None if it is acceptable."""
        if self._key is None:
            return None
        if env.sig is None:
            return "unsigned"
        if not verify(env, self._key):
            return "bad signature"
        return None

    def check(self, env: Envelope) -> bool:
        """Return True if `env` is acceptable: no secret configured, or correctly signed."""
        return self.problem(env) is None

    def require(self, env: Envelope) -> Envelope:
        """Return `env` if acceptable, else raise InvalidSignature naming it and the reason."""
        reason = self.problem(env)
        if reason is not None:
            raise InvalidSignature(
                f"{reason} envelope {env.type!r} (id {env.id}) from {env.source!r} "
                f"in run {env.run_id!r} refused: a signing secret is configured"
            )
        return env
