"""The `state` scrm puts on store QR codes, and reading it back.

WeCom echoes a contact way's `state` in the add_external_contact event and a join way's `state`
on each group member (groupchat/get), and limits it to 30 characters. scrm's states name the
store, so a scan or a join is attributed even before any lookup:

    st:<store>:<n>   a store staff member's "contact me" QR (n: the code's id, base 36)
    sg:<store>       the store's group live code
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_STATE = 30
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class StoreState:
    kind: str  # staff | group
    store_code: str


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if not n:
            return out


def staff_state(store_code: str, code_id: int) -> str:
    state = f"st:{store_code}:{_base36(code_id)}"
    if len(state) > MAX_STATE:
        raise ValueError(f"state {state!r} is over WeCom's {MAX_STATE} characters (store code too long)")
    return state


def group_state(store_code: str) -> str:
    state = f"sg:{store_code}"
    if len(state) > MAX_STATE:
        raise ValueError(f"state {state!r} is over WeCom's {MAX_STATE} characters (store code too long)")
    return state


def parse_state(state: str | None) -> StoreState | None:
    """The store a state names, or None for anything else (other tools' states are kept as they are)."""
    if not state:
        return None
    parts = state.split(":")
    if parts[0] == "st" and len(parts) == 3 and parts[1]:
        return StoreState("staff", parts[1])
    if parts[0] == "sg" and len(parts) == 2 and parts[1]:
        return StoreState("group", parts[1])
    return None
