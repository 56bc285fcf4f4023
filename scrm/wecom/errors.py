"""Typed WeCom errors: callback problems and API errors carrying WeCom's errcode (reference §3.11)."""

from __future__ import annotations


class CallbackError(ValueError):
    """A callback we refuse; ``code`` is the WXBizMsgCrypt error code."""

    code = -40002


class WeComAPIError(RuntimeError):
    """A WeCom API answered with a non-zero errcode (or could not be reached)."""

    def __init__(self, errcode: int, errmsg: str = "", *, path: str = ""):
        super().__init__(f"WeCom {path or 'API'} errcode={errcode} errmsg={errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.path = path


class TokenError(WeComAPIError):
    """40014/42001/41001 still failing after one refresh, or gettoken itself failed (e.g. 40001)."""


class RateLimited(WeComAPIError):
    """45009 (frequency) or 45033 (concurrency) still failing after the configured backoff."""


class SystemBusy(WeComAPIError):
    """-1: WeCom asks us to retry later."""


class NotExternalContact(WeComAPIError):
    """84061: the customer is not (or no longer) that member's contact."""


class WelcomeCodeUsed(WeComAPIError):
    """41051/41050: the welcome code was used already or expired; never retry."""


class GroupDismissed(WeComAPIError):
    """49008: the customer group no longer exists."""


class TransportError(WeComAPIError):
    """Timeout or connection failure talking to WeCom; errcode is -2 (ours, not WeCom's)."""

    def __init__(self, message: str, *, path: str = ""):
        super().__init__(-2, message, path=path)


TOKEN_ERRCODES = frozenset({40014, 42001, 41001})
RATE_ERRCODES = frozenset({45009, 45033})

_BY_CODE: dict[int, type[WeComAPIError]] = {
    -1: SystemBusy,
    45009: RateLimited,
    45033: RateLimited,
    40014: TokenError,
    42001: TokenError,
    41001: TokenError,
    40001: TokenError,
    84061: NotExternalContact,
    41050: WelcomeCodeUsed,
    41051: WelcomeCodeUsed,
    49008: GroupDismissed,
}


def error_for(errcode: int, errmsg: str, path: str = "") -> WeComAPIError:
    return _BY_CODE.get(errcode, WeComAPIError)(errcode, errmsg, path=path)
