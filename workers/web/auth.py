"""Who may use the page: the Host check, the token (header, cookie or a `?token=` login) and the
same-origin rule of the Stop action.

Without a token the server listens on loopback only (WebOptions.check refuses otherwise), and
every request must name a loopback Host: a web site that points its own name at 127.0.0.1 (DNS
rebinding) would otherwise read the page and stop runs from a visitor's browser. With a token,
every request needs it: an `Authorization: Bearer` or `X-Trainer-Token` header, or the cookie
that opening any page with `?token=T` sets (the address is then cleaned of the token by a
redirect, so it stays out of the history and of Referer headers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from workers.web.options import WebOptions, is_loopback

TOKEN_COOKIE = "trainer_web"
TOKEN_HEADER = "x-trainer-token"
TOKEN_PARAM = "token"


def cookie_value(token: str) -> str:
    """What the login cookie holds: a digest of the token, so the token itself is never stored."""
    return hmac.new(token.encode(), b"trainer web session", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings (a token compared byte by byte leaks its prefix)."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def _hostname(host_header: str) -> str | None:
    """The host name of a Host header ("localhost:8080", "[::1]:8080"), None if malformed."""
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header `name` (lower case), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def same_origin(scope: Scope) -> bool:
    """Whether a state-changing request comes from this page (its Origin, if any, is this host)."""
    # A cross-site form or script carries its own site's Origin; curl and scripts send none.
    origin = header(scope, b"origin")
    if origin is None:
        return True  # not a browser's cross-origin request (curl, a script): the token decides
    host = header(scope, b"host") or ""
    try:
        return urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


class TokenGuard:
    """ASGI middleware: refuses a foreign Host, and requests without the token when one is set."""

    def __init__(self, app: ASGIApp, options: WebOptions) -> None:
        self.app = app
        self.options = options
        self.token = options.token
        self.cookie = cookie_value(options.token) if options.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer it with 403, 401 or the login redirect."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.options.local_only:
            name = _hostname(header(scope, b"host") or "")
            if name is None or not is_loopback(name):
                await _refuse(
                    send,
                    403,
                    "this page answers only to this machine's names (localhost, 127.0.0.1); "
                    f"open http://127.0.0.1:{self.options.port}/ or start `trainer web` with "
                    "--host and --token",
                )
                return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        offered = [v for k, v in query if k == TOKEN_PARAM]
        if offered:
            if not _same(offered[-1], self.token):
                await _refuse(send, 401, "wrong token: open the page with ?token=<the token>")
                return
            await self._login(scope, send, [(k, v) for k, v in query if k != TOKEN_PARAM])
            return
        if self._carries_token(scope):
            await self.app(scope, receive, send)
            return
        await _refuse(
            send,
            401,
            "this page needs the token given to `trainer web --token` (or TRAINER_WEB_TOKEN): "
            "open it once as /?token=<the token>, or send the header X-Trainer-Token",
            html=_wants_html(scope),
        )

    def _carries_token(self, scope: Scope) -> bool:
        assert self.token is not None and self.cookie is not None
        given = header(scope, TOKEN_HEADER.encode())
        if given is not None:
            return _same(given, self.token)
        authorization = header(scope, b"authorization") or ""
        if authorization[:7].lower() == "bearer ":
            return _same(authorization[7:].strip(), self.token)
        cookies = SimpleCookie()
        try:
            cookies.load(header(scope, b"cookie") or "")
        except Exception:  # a malformed Cookie header is no login (http.cookies.CookieError)
            return False
        morsel = cookies.get(TOKEN_COOKIE)
        return morsel is not None and _same(morsel.value, self.cookie)

    async def _login(self, scope: Scope, send: Send, rest: list[tuple[str, str]]) -> None:
        """Set the login cookie and redirect to the same address without the token."""
        assert self.cookie is not None
        location = scope.get("path", "/") + (f"?{urlencode(rest)}" if rest else "")
        # Lax, not Strict: a login link opened from another site must still carry the cookie
        # through the redirect; cross-site POSTs (a forged Stop) never carry a Lax cookie.
        cookie = f"{TOKEN_COOKIE}={self.cookie}; Path=/; HttpOnly; SameSite=Lax"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1", "replace")),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _wants_html(scope: Scope) -> bool:
    return "text/html" in (header(scope, b"accept") or "")


async def _refuse(send: Send, status: int, message: str, html: bool = False) -> None:
    """Answer with `status` and `message` (JSON, or a one-paragraph page for a browser)."""
    if html:
        body = (
            "<!doctype html><meta charset=utf-8><title>trainer web</title>"
            f"<p>{message.replace('<', '&lt;')}</p>"
        ).encode()
        kind = b"text/html; charset=utf-8"
    else:
        body = json.dumps({"error": message}).encode()
        kind = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
