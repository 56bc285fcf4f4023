"""Event hooks that keep the CRM current: a contact's mobiles can become known after their calls
and SMS were imported (a remark mobile set in WeCom, an order with a mobile), so an event about a
customer links the messages waiting on their mobiles and rebuilds that customer's records."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from scrm.crm.ingest import link_unmatched
from scrm.logs import get_logger
from scrm.orders.models import CustomerMobile

log = get_logger(__name__)
_CHUNK = 500


def link_customers(engine: Engine, external_userids: Iterable[str]) -> set[str]:
    """Attach unmatched calls and SMS to these customers where ``customer_mobiles`` now names them;
    answers the customers who got messages (their records need a rebuild)."""
    ids = sorted({i for i in external_userids if i})
    mobiles: set[str] = set()
    m = CustomerMobile.__table__.c
    with engine.connect() as conn:
        for i in range(0, len(ids), _CHUNK):
            mobiles.update(conn.execute(select(m.mobile).where(m.external_userid.in_(ids[i:i + _CHUNK]))).scalars())
    return link_unmatched(engine, mobiles) if mobiles else set()


def crm_link_hook(engine: Engine, mark: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """For the callback worker's ``on_customers_changed``: link, then mark the customers who got
    messages for the debounced rebuild. Never raises (the callback is already applied; the nightly
    rebuild links everything anyway)."""

    def changed(external_userids: list[str]) -> None:
        try:
            linked = link_customers(engine, external_userids)
        except Exception as exc:  # noqa: BLE001 - a database hiccup here must not fail the callback
            log.warning("crm_link_failed", customers=len(external_userids), error=str(exc)[:200])
            return
        if linked:
            mark(sorted(linked))

    return changed


def fan_out(*hooks: Callable[[list[str]], None] | None) -> Callable[[list[str]], None]:
    """One ``on_customers_changed`` that tells every hook; one failing hook does not stop the others."""
    present = [h for h in hooks if h is not None]

    def changed(external_userids: list[str]) -> None:
        for hook in present:
            try:
                hook(external_userids)
            except Exception as exc:  # noqa: BLE001
                log.warning("customers_changed_hook_failed", hook=getattr(hook, "__qualname__", "?"),
                            error=str(exc)[:200])

    return changed
