"""Mobile normalisation: every way people write a Chinese mobile becomes +86 and the 11 digits;
everything else is refused with a reason.

Mutations tried (each made a test here fail, then was undone): accepting a leading 2 (``1[2-9]``),
dropping the ``0086`` branch, accepting 12 digits, letting letters through the separator strip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scrm.orders.mobile import NotAMobile, normalise_mobile

CANONICAL = "+8613800138000"


@pytest.mark.parametrize("text", [
    "13800138000", "138 0013 8000", "138-0013-8000", "(138)0013-8000", "+8613800138000", "+86 138 0013 8000",
    "(+86) 138-0013-8000", "008613800138000", "0086 138 0013 8000", "8613800138000", "86-13800138000",
    " 13800138000 ", "138.0013.8000", "138\u30000013\u30008000", "（+86）13800138000",
])
def test_the_ways_people_write_a_mobile(text):
    assert normalise_mobile(text) == CANONICAL


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"), ("   ", "empty"), ("1380013800", "it has 10"), ("138001380001", "it has 12"),
    ("12800138000", "starts with 13 to 19"), ("23800138000", "starts with 13 to 19"),
    ("010-12345678", "starts with 13 to 19"), ("+1 415 555 0100", r"only \+86"), ("+8513800138000", r"only \+86"),
    ("1380013800O", "only digits"), ("tel:13800138000", "only digits"), ("x13800138000", "only digits"),
    ("138/0013/8000", "only digits"),
    ("１３８００１３８０００", "only digits"), ("++8613800138000", "only digits"),
    ("87 13800138000", "it has 13"), ("0013800138000", "it has 13"),
])
def test_what_is_not_a_mobile_is_refused_with_a_reason(text, why):
    with pytest.raises(NotAMobile, match=why):
        normalise_mobile(text)


# -- properties, against an oracle written apart from the code -------------------------------------
ALLOWED_SEPARATORS = " -().\u3000（）\t"


def oracle(text: str) -> str | None:
    """Remove the allowed separators; then the rest must be one of the four written forms of a
    mobile d: d, 86d, 0086d, +86d, where d is 11 digits 1[3-9]xxxxxxxxx."""
    compact = "".join(ch for ch in text if ch not in ALLOWED_SEPARATORS + "\n\r")

    def is_mobile(d: str) -> bool:
        return len(d) == 11 and all(c in "0123456789" for c in d) and d[0] == "1" and d[1] in "3456789"

    for prefix in ("", "86", "0086", "+86"):
        if compact.startswith(prefix) and is_mobile(compact[len(prefix):]):
            return "+86" + compact[len(prefix):]
    return None


digits11 = st.builds(lambda second, rest: "1" + second + rest, st.sampled_from("3456789"),
                     st.text("0123456789", min_size=9, max_size=9))
separator = st.text(ALLOWED_SEPARATORS, max_size=2)


@given(digits11, st.sampled_from(["", "+86", "0086", "86", "(+86)", "+86 ", "0086-"]),
       st.lists(separator, min_size=12, max_size=12))
def test_any_written_form_round_trips_to_the_canonical_number(d, prefix, seps):
    written = prefix + "".join(s + c for s, c in zip(seps, d, strict=False)) + seps[-1]
    assert normalise_mobile(written) == "+86" + d
    assert normalise_mobile(normalise_mobile(written)) == "+86" + d  # canonical stays canonical


@given(st.text(alphabet="0123456789+86 -()" + "a1\u3000", max_size=20) | digits11.map(lambda d: "86" + d)
       | st.text(max_size=16))
def test_normalise_agrees_with_the_oracle_on_any_text(text):
    expected = oracle(text)
    if any(ch.isspace() and ch not in ALLOWED_SEPARATORS + "\n\r" for ch in text):
        return  # other Unicode spaces: the code also strips them, the oracle does not know them
    if expected is None:
        with pytest.raises(NotAMobile):
            normalise_mobile(text)
    else:
        assert normalise_mobile(text) == expected
