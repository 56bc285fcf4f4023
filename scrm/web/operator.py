"""Operator-only pages (/docs, /redoc, /openapi.json, /metrics): who may see them.

Anonymous visitors get them only when the operator made them public
(``web.operator_pages_public``) or the corp is the local sandbox. Otherwise the request must carry
the operator token (``web.operator_token``), as ``Authorization: Bearer <token>`` or HTTP Basic
with the token as the password (any user name), so a browser asks for it. Without a token
configured the pages do not exist (404) for anybody: nothing to guess.
"""

from __future__ import annotations

import base64
import binascii
import hmac

OPERATOR_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics"})
REALM = 'Basic realm="scrm operator", charset="UTF-8"'


class OperatorAccess:
    def __init__(self, *, public: bool = True, token: str = ""):
        self.public, self._token = public, token.encode("utf-8")

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def allows(self, authorization: str | None) -> bool:
        """May a request with this ``Authorization`` header see operator pages?"""
        if self.public:
            return True
        if not self._token or not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            given = value.encode("utf-8")
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value, validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(given, self._token)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class OperatorGate:
    """ASGI middleware: the operator pages answer 404 (no token configured) or 401 with a Basic
    challenge (token configured, not given or wrong) unless ``access`` allows the request."""

    def __init__(self, app, *, access: OperatorAccess):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["path"] not in OPERATOR_PATHS
                or self.access.allows(_header(scope, b"authorization"))):
            await self.app(scope, receive, send)
            return
        if self.access.has_token:
            status, body = 401, "需要运营口令 (operator token required)".encode()
            headers = [(b"www-authenticate", REALM.encode())]
        else:
            status, body, headers = 404, b"Not Found", []
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            *headers]})
        await send({"type": "http.response.body", "body": body})
