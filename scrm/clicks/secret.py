"""The clicks secret, and the links that carry a signed customer token.

``clicks.secret`` signs customer tokens and salts anonymous visitor keys. Unset, it is derived
(HMAC with its own purpose label, so it never equals the secret it comes from nor the toolbar's
session secret) from ``web.session_secret``, else the corp secret; the sandbox corp with neither
gets a fixed derivation from its corp id, so ``scrm run`` works out of the box. A real corp with
nothing set is refused with the setting to set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from urllib.parse import quote

from scrm.clicks.visitor import make_customer_token
from scrm.config import SANDBOX_CORP_ID, ConfigError

_PURPOSE = b"scrm clicks secret v1"
_SANDBOX_PURPOSE = b"scrm clicks sandbox-only secret v1|"


def derive_clicks_secret(clicks_secret: str, web_session_secret: str, corp_secret: str, corp_id: str) -> str:
    if clicks_secret:
        return clicks_secret
    for base in (web_session_secret, corp_secret):
        if base:
            return hmac.new(base.encode(), _PURPOSE, hashlib.sha256).hexdigest()
    if corp_id == SANDBOX_CORP_ID:
        return hashlib.sha256(_SANDBOX_PURPOSE + corp_id.encode()).hexdigest()
    raise ConfigError("set SCRM_CLICKS__SECRET (or SCRM_WEB__SESSION_SECRET or the corp secret) "
                      "to sign customer tokens in tracked links")


def clicks_secret(settings) -> str:
    return derive_clicks_secret(settings.clicks.secret.get_secret_value(),
                                settings.web.session_secret.get_secret_value(),
                                settings.wecom.secret.get_secret_value(), settings.wecom.corp_id)


def customer_link(base_url: str, code: str, external_userid: str, secret: str | bytes,
                  expires_at: dt.datetime) -> str:
    """``{base_url}/t/{code}?c=<token>``: a 1:1 or mini-program link whose clicks carry the customer
    (until ``expires_at``; after it the click still redirects and counts, anonymously)."""
    token = make_customer_token(secret, external_userid, expires_at)
    return f"{base_url.rstrip('/')}/t/{quote(code, safe='')}?c={token}"
