"""The visitor key: signed customer tokens and the anonymous (network, user agent, day) key.

Mutations tried (each made tests here fail, then was undone):
- ``hmac.compare_digest(...)`` replaced by ``True`` → every forged-token test passed a forgery;
- the expiry check removed → ``test_token_expires_at_its_second`` returned the customer;
- the IPv4 prefix 24 → 32 → ``test_one_visitor_across_a_carrier_block`` gave two visitors;
- the day left out of ``daily_salt`` → ``test_keys_change_with_the_day_and_the_secret`` failed;
- the canonical-spelling check in ``_unb64`` removed → the hypothesis test found a token whose last
  character could be changed and still read as the same customer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scrm.clicks.visitor import (
    BadAddress,
    InvalidCustomerToken,
    TokenRefusal,
    anonymous_visitor_key,
    customer_visitor_key,
    daily_salt,
    make_customer_token,
    network_of,
    read_customer_token,
    visitor_key,
)

SECRET = "a-click-secret-of-some-length"
OTHER = "another-secret-also-long-enough"
NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=7)
USER = "wmAbCdEf0123456789_-xyzXYZ012345"
UA = "Mozilla/5.0 (iPhone) Mobile/15E148 MicroMessenger/8.0.49 NetType/WIFI"


def refusal(token: str, secret: str = SECRET, now: dt.datetime = NOW) -> TokenRefusal:
    with pytest.raises(InvalidCustomerToken) as info:
        read_customer_token(secret, token, now)
    return info.value.reason


def test_token_names_its_customer_until_it_expires():
    token = make_customer_token(SECRET, USER, LATER)
    got = read_customer_token(SECRET, token, NOW)
    assert (got.external_userid, got.expires_at) == (USER, LATER)
    assert len(token) < 120, "rides in a URL"
    assert read_customer_token(SECRET.encode(), token, NOW).external_userid == USER


def test_token_expires_at_its_second():
    token = make_customer_token(SECRET, USER, LATER)
    assert read_customer_token(SECRET, token, LATER - dt.timedelta(seconds=1)).external_userid == USER
    assert refusal(token, now=LATER) is TokenRefusal.EXPIRED
    assert refusal(token, now=LATER + dt.timedelta(days=400)) is TokenRefusal.EXPIRED


def test_forged_tokens_are_refused():
    token = make_customer_token(SECRET, USER, LATER)
    v, payload, mac = token.split(".")
    assert refusal(token, secret=OTHER) is TokenRefusal.FORGED
    # Someone else's payload (or a longer expiry) under our mac.
    other_payload = make_customer_token(SECRET, "wmSomebodyElse", LATER).split(".")[1]
    assert refusal(f"v1.{other_payload}.{mac}") is TokenRefusal.FORGED
    longer = make_customer_token(SECRET, USER, LATER + dt.timedelta(days=365)).split(".")[1]
    assert refusal(f"v1.{longer}.{mac}") is TokenRefusal.FORGED
    # A token minted with another secret, even for a real customer.
    assert refusal(make_customer_token(OTHER, USER, LATER)) is TokenRefusal.FORGED
    # Flip the first character of the mac.
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]
    assert refusal(f"v1.{payload}.{flipped}") is TokenRefusal.FORGED


def test_a_forged_expired_token_says_forged():
    """The signature is checked first: "expired" is only said of tokens we issued."""
    token = make_customer_token(OTHER, USER, NOW - dt.timedelta(days=1))
    assert refusal(token) is TokenRefusal.FORGED


@pytest.mark.parametrize("token", [
    "", "abc", "v1", "v1..", "v1.a.b.c", "v2.eyJ1IjoieCJ9.AAAAAAAAAAAAAAAAAAAAAA",
    "v1.eyJ1IjoieCJ9.AAAA",  # mac too short
    "v1.eyJ1Ijoi+CJ9.AAAAAAAAAAAAAAAAAAAAAA",  # not base64url
    "v1.eyJ1IjoieCJ9.AAAAAAAAAAAAAAAAAAAAAA=",  # padding is not part of the spelling
    "v1." + "A" * 600 + ".AAAAAAAAAAAAAAAAAAAAAA",
    "v1.eyJ1IjoieCJ9.AAAAAAAAAAAAAAAAAAAAA",  # 21 characters cannot be 16 bytes
])
def test_malformed_tokens_are_refused(token):
    assert refusal(token) is TokenRefusal.MALFORMED


def test_signed_but_unreadable_payload_is_malformed():
    """Only reachable with the secret; still a clear refusal, not a KeyError at /t/."""
    import base64
    import hashlib
    import hmac

    for body in (b"not json", b'{"u":"x"}', b'{"u":"","e":1}', b'{"u":"x","e":"soon"}', b'{"u":7,"e":1}'):
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        mac = hmac.new(SECRET.encode(), b"scrm.clicks.customer-token.v1|" + payload.encode(), hashlib.sha256)
        mac_text = base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=").decode()
        assert refusal(f"v1.{payload}.{mac_text}") is TokenRefusal.MALFORMED, body


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="16 bytes"):
        make_customer_token("short", USER, LATER)
    with pytest.raises(ValueError, match="printable"):
        make_customer_token(SECRET, "", LATER)
    with pytest.raises(ValueError, match="printable"):
        make_customer_token(SECRET, "x" * 129, LATER)
    with pytest.raises(ValueError, match="timezone-aware"):
        make_customer_token(SECRET, USER, dt.datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        read_customer_token(SECRET, make_customer_token(SECRET, USER, LATER), dt.datetime(2026, 12, 1))


userids = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=64)


@settings(max_examples=300, deadline=None)
@given(userid=userids, seconds=st.integers(1, 10**8), data=st.data())
def test_any_change_to_a_token_is_refused(userid, seconds, data):
    """Round trip for any printable external_userid; changing any one character of the token never
    yields a customer (neither another one nor the same one)."""
    expires = NOW + dt.timedelta(seconds=seconds)
    token = make_customer_token(SECRET, userid, expires)
    got = read_customer_token(SECRET, token, NOW)
    assert got.external_userid == userid
    assert got.expires_at == dt.datetime.fromtimestamp(int(expires.timestamp()), dt.UTC)
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    c = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="), label="char")
    if c == token[i]:
        return
    with pytest.raises(InvalidCustomerToken):
        read_customer_token(SECRET, token[:i] + c + token[i + 1:], NOW)


DAY = dt.date(2026, 11, 30)
SALT = daily_salt(SECRET, DAY)


def test_one_visitor_across_a_carrier_block():
    """A phone moving between addresses of one /24 (IPv4) or /64 (IPv6) stays one visitor."""
    assert anonymous_visitor_key("117.136.12.7", UA, SALT) == anonymous_visitor_key("117.136.12.250", UA, SALT)
    assert anonymous_visitor_key("2408:8456:3a1:77c::1", UA, SALT) == anonymous_visitor_key(
        "2408:8456:3a1:77c:ffff:1:2:3", UA, SALT)
    assert anonymous_visitor_key("::ffff:117.136.12.9", UA, SALT) == anonymous_visitor_key("117.136.12.7", UA, SALT)


def test_other_networks_or_devices_are_other_visitors():
    base = anonymous_visitor_key("117.136.12.7", UA, SALT)
    assert anonymous_visitor_key("117.136.13.7", UA, SALT) != base
    assert anonymous_visitor_key("117.136.12.7", UA + " Language/en", SALT) != base
    assert anonymous_visitor_key("2408:8456:3a1:77d::1", UA, SALT) != anonymous_visitor_key(
        "2408:8456:3a1:77c::1", UA, SALT)
    assert anonymous_visitor_key("117.136.12.7", None, SALT) == anonymous_visitor_key("117.136.12.7", "", SALT)


def test_keys_change_with_the_day_and_the_secret():
    base = anonymous_visitor_key("117.136.12.7", UA, SALT)
    assert anonymous_visitor_key("117.136.12.7", UA, daily_salt(SECRET, DAY + dt.timedelta(days=1))) != base
    assert anonymous_visitor_key("117.136.12.7", UA, daily_salt(OTHER, DAY)) != base
    assert daily_salt(SECRET, DAY) == SALT, "every process derives the same salt"


def test_the_key_does_not_give_the_address_away():
    """Hashing every /24 of the block finds the network only with the day's salt: without it (no
    salt, another day's salt) the search comes back empty. The same search with the right salt
    finding it shows the search itself is sound."""
    key = anonymous_visitor_key("117.136.12.7", UA, SALT)
    assert key.startswith("a:") and len(key) == 34 and int(key[2:], 16) >= 0
    guesses = [str(n.network_address) for n in ipaddress.ip_network("117.136.0.0/16").subnets(new_prefix=24)]

    def search(salt: bytes | None) -> list[str]:
        found = []
        for ip in guesses:
            if salt is None:
                plain = "a:" + hashlib.sha256(f"{network_of(ip)}|{UA}".encode()).hexdigest()[:32]
            else:
                plain = anonymous_visitor_key(ip, UA, salt)
            if plain == key:
                found.append(ip)
        return found

    assert search(SALT) == ["117.136.12.0"]
    assert search(None) == []
    assert search(daily_salt(SECRET, DAY - dt.timedelta(days=1))) == []


def test_network_of_and_bad_addresses():
    assert network_of("10.1.2.3") == "10.1.2.0/24"
    assert network_of("fe80::1%eth0") == "fe80::/64"
    for bad in ("testclient", "", "1.2.3", "300.1.1.1", "unix:/tmp/sock"):
        with pytest.raises(BadAddress):
            anonymous_visitor_key(bad, UA, SALT)
    with pytest.raises(ValueError, match="16 bytes"):
        anonymous_visitor_key("10.1.2.3", UA, b"short")


def test_a_known_customer_is_keyed_by_customer_not_network():
    token = read_customer_token(SECRET, make_customer_token(SECRET, USER, LATER), NOW)
    assert visitor_key(token, "117.136.12.7", UA, SALT) == customer_visitor_key(USER) == "c:" + USER
    assert visitor_key(token, "8.8.8.8", "curl/8", SALT) == "c:" + USER
    assert visitor_key(None, "117.136.12.7", UA, SALT) == anonymous_visitor_key("117.136.12.7", UA, SALT)
