"""Who is "the same visitor" when counting unique clicks.

Two kinds of key, never equal to each other:

- ``c:<external_userid>`` when the link carries a valid signed customer token (mini-program and
  1:1 links, where we know who we sent it to). The click then also carries the customer, which
  attribution needs. A token is ``v1.<payload>.<mac>``: the payload is base64url JSON with the
  external_userid and an expiry (Unix seconds) chosen by the issuer, the mac is HMAC-SHA256 over
  a purpose label and the payload, cut to 128 bits. Whoever holds the link can read the
  external_userid (it is opaque and per corp); the token makes it unforgeable, not secret.
  ``read_customer_token`` refuses a malformed,
  forged or expired token with a reason; the caller then falls back to the anonymous key, so a
  bad token never breaks the redirect and never names the wrong customer.
- ``a:<hex>`` otherwise: HMAC-SHA256 of (the IPv4 /24 or IPv6 /64 network, the user agent) under
  a salt of the day. The network rather than the address because mobile carriers move a phone
  between addresses of one block; the salt so the stored key cannot be turned back into an IP by
  hashing all 2^24 IPv4 networks. ``daily_salt`` derives the salt from the server secret and the
  date so every process agrees without shared state; a caller that wants keys unlinkable even for
  someone holding the secret can pass random salts it forgets after a few days instead. A side
  effect of the daily salt: the same anonymous reader before and after midnight is two visitors,
  so use the corp's local day (few people click around midnight).

Why ``hmac`` and not ``itsdangerous``: itsdangerous's expiry is a maximum age checked by the
reader against the signing time, while here the issuer picks the expiry (a 1:1 link can live for
a month, a mini-program token for an hour) and it must travel in the token; and itsdangerous raises
the same ``BadSignature`` for a token without a separator as for a forged one, which would hide
the "malformed" reason. The standard library's ``hmac.compare_digest`` and a purpose label (so a
secret shared with, say, the order API's signatures cannot mint click tokens) cover the rest.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

_TOKEN_PURPOSE = b"scrm.clicks.customer-token.v1|"
_SALT_PURPOSE = b"scrm.clicks.visitor-salt|"
_MAC_BYTES = 16
MAX_TOKEN_CHARS = 512  # refused before any decoding: a URL parameter, not a payload carrier
MAX_USERID_CHARS = 128  # WeCom's external_userid is 32 characters today; leave room


class TokenRefusal(StrEnum):
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"


class InvalidCustomerToken(ValueError):
    """A customer token that must not name a customer; ``reason`` says why."""

    def __init__(self, reason: TokenRefusal, detail: str):
        super().__init__(f"customer token {reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BadAddress(ValueError):
    """The client address is not an IP address (a misconfigured proxy header, a test client)."""


@dataclass(frozen=True)
class CustomerToken:
    external_userid: str
    expires_at: dt.datetime  # aware UTC


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ValueError("the click secret must be at least 16 bytes")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:  # the last character's unused bits: one token, one spelling
        raise ValueError("not canonical base64url")
    return raw


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, _TOKEN_PURPOSE + payload.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES]


def _aware(moment: dt.datetime, name: str) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def make_customer_token(secret: str | bytes, external_userid: str, expires_at: dt.datetime) -> str:
    """A URL-safe token naming ``external_userid`` until ``expires_at`` (whole seconds, rounded down)."""
    key = _secret_bytes(secret)
    if not external_userid or len(external_userid) > MAX_USERID_CHARS or not external_userid.isprintable():
        raise ValueError(f"external_userid must be 1–{MAX_USERID_CHARS} printable characters")
    exp = int(_aware(expires_at, "expires_at").timestamp())
    body = json.dumps({"u": external_userid, "e": exp}, separators=(",", ":"), ensure_ascii=False)
    payload = _b64(body.encode("utf-8"))
    return f"v1.{payload}.{_b64(_mac(key, payload))}"


def read_customer_token(secret: str | bytes, token: str, now: dt.datetime) -> CustomerToken:
    """The customer a token names, or :class:`InvalidCustomerToken` (malformed, forged, expired).

    The signature is checked before the payload is parsed, so a forged token's content is never
    trusted, and before the expiry, so "expired" is only said of tokens we really issued."""
    key = _secret_bytes(secret)
    now = _aware(now, "now")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "missing or too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "not v1.<payload>.<mac>")
    _, payload, mac_text = parts
    try:
        mac = _unb64(mac_text)
        _unb64(payload)
    except (ValueError, binascii.Error) as exc:
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "not base64url") from exc
    if len(mac) != _MAC_BYTES:
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "signature has the wrong length")
    if not hmac.compare_digest(mac, _mac(key, payload)):
        raise InvalidCustomerToken(TokenRefusal.FORGED, "signature does not match")
    try:
        data = json.loads(_unb64(payload).decode("utf-8"))
        userid, exp = data["u"], data["e"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        # Signed by us but unreadable: only a bug of ours or a leaked secret gets here.
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "signed payload is not readable") from exc
    if not isinstance(userid, str) or not userid or type(exp) is not int:
        raise InvalidCustomerToken(TokenRefusal.MALFORMED, "signed payload has wrong fields")
    expires_at = dt.datetime.fromtimestamp(exp, dt.UTC)
    if now >= expires_at:
        raise InvalidCustomerToken(TokenRefusal.EXPIRED, f"expired at {expires_at.isoformat()}")
    return CustomerToken(userid, expires_at)


@lru_cache(maxsize=64)  # one HMAC per day and secret, not per click
def daily_salt(secret: str | bytes, day: dt.date) -> bytes:
    """The salt of one day, the same in every process, unguessable without the secret."""
    return hmac.new(_secret_bytes(secret), _SALT_PURPOSE + day.isoformat().encode(), hashlib.sha256).digest()


@lru_cache(maxsize=65536)  # parsing an address costs more than the rest of the visitor key
def network_of(ip: str) -> str:
    """The IPv4 /24 or IPv6 /64 an address belongs to (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.strip().split("%")[0])
    except ValueError as exc:
        raise BadAddress(f"not an IP address: {ip!r}") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def anonymous_visitor_key(ip: str, user_agent: str | None, salt: bytes) -> str:
    """``a:`` + 32 hex characters; same network, same user agent and same salt → same key."""
    if len(salt) < 16:
        raise ValueError("the salt must be at least 16 bytes")
    message = network_of(ip).encode() + b"|" + (user_agent or "").strip().encode("utf-8", "replace")
    return "a:" + hmac.new(salt, message, hashlib.sha256).hexdigest()[:32]


def customer_visitor_key(external_userid: str) -> str:
    return "c:" + external_userid


def visitor_key(customer: CustomerToken | None, ip: str, user_agent: str | None, salt: bytes) -> str:
    """The key unique clicks are counted by: the customer when known, else the anonymous key."""
    if customer is not None:
        return customer_visitor_key(customer.external_userid)
    return anonymous_visitor_key(ip, user_agent, salt)
