"""Chinese mobile numbers as one canonical string, ``+8613800138000``, so a shop's ``138 0013 8000``,
a remark's ``+86-138-0013-8000`` and a CSV's ``008613800138000`` find the same customer.

Pure and shared: the CRM pages will want it too (it may move to :mod:`scrm.contacts`)."""

from __future__ import annotations

import re

# What people type between the digits: spaces (also the full-width one), dashes, dots, parentheses.
_SEPARATORS = re.compile(r"[\s\u3000\-().（）]+")
# A mainland mobile: 11 digits, 1 then 3-9 (13x..19x).
_MOBILE = re.compile(r"1[3-9]\d{9}")


class NotAMobile(ValueError):
    """The text is not a Chinese mobile number; the message says why (English, for APIs and CLI)."""


def normalise_mobile(text: str) -> str:
    """``text`` as ``+86`` and the 11 digits, or :class:`NotAMobile`.

    Accepted: the 11 digits, optionally after ``+86``, ``0086`` or ``86``, with spaces, dashes,
    dots or parentheses anywhere (``(+86) 138-0013-8000``). Refused: anything else (letters,
    landlines, other countries, too few or too many digits)."""
    if not isinstance(text, str):
        raise NotAMobile("a mobile must be text")
    raw = text.strip()
    if not raw:
        raise NotAMobile("the mobile is empty")
    compact = _SEPARATORS.sub("", raw)
    plus = compact.startswith("+")
    digits = compact[1:] if plus else compact
    if not digits.isascii() or not digits.isdigit():
        raise NotAMobile(f"{text!r} is not a mobile number: only digits, an optional +86, spaces, dashes "
                         "and parentheses are allowed")
    if plus:
        if not digits.startswith("86"):
            raise NotAMobile(f"{text!r} is not a Chinese mobile: only +86 numbers are accepted")
        digits = digits[2:]
    elif len(digits) == 15 and digits.startswith("0086"):
        digits = digits[4:]
    elif len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) != 11:
        raise NotAMobile(f"{text!r} is not a Chinese mobile: it needs 11 digits (1xx xxxx xxxx), "
                         f"it has {len(digits)}")
    if not _MOBILE.fullmatch(digits):
        raise NotAMobile(f"{text!r} is not a Chinese mobile: a mobile starts with 13 to 19")
    return "+86" + digits
