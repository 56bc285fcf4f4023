"""The demo chain on scrm's side: what an operator would do by hand after the first sync of a new
corp (import the store list, attach each store's groups, create the QR codes), done for the
sandbox's demo corp so `scrm run` shows every page with real content.

It goes through the same functions as the operators' commands (`scrm stores import`, `scrm stores
groups assign`, `scrm stores codes`) and only ever runs for the sandbox corp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scrm.logs import get_logger
from scrm.stores import service as store_codes
from scrm.stores.csvio import StoreRow, import_stores
from scrm.stores.groups import assign_groups
from scrm.stores.models import Store, StoreStatus
from scrm.wecom.api import StoreCodesAPI

log = get_logger(__name__)


@dataclass
class DemoChainReport:
    stores: int = 0
    cities: list[str] = field(default_factory=list)
    groups: int = 0
    staff_codes: int = 0
    group_codes: int = 0
    failed: list[str] = field(default_factory=list)


def set_up_demo_chain(engine: Engine, client: StoreCodesAPI, demo: dict[str, Any], *, cap: int = 200,
                      room_base_id: int = 1,
                      corp_is_sandbox: bool) -> DemoChainReport | None:
    """Stores, staff, group attachments and QR codes for the sandbox's demo chain, once: a
    database that already has stores is left as the operator (or an earlier run) made it.
    ``demo`` is what the sandbox's seed built (store code -> chat ids). Returns None when there
    was nothing to do."""
    from scrm.sandbox.demo_chain import DEMO_STORES

    if not corp_is_sandbox:
        raise ValueError("the demo chain is only ever set up in the sandbox corp")
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(Store.__table__)).scalar_one():
            return None
    chats = {entry["code"]: list(entry.get("chat_ids") or []) for entry in demo.get("stores", [])}
    rows = [StoreRow(code=st.code, name=st.name, address=st.address, city=st.city, latitude=st.latitude,
                     longitude=st.longitude, status=StoreStatus.open, staff=sorted(u for u, _ in st.staff))
            for st in DEMO_STORES]
    report = DemoChainReport()
    report.stores = import_stores(engine, rows).created
    report.cities = sorted({st.city for st in DEMO_STORES})
    for st in DEMO_STORES:
        if chats.get(st.code):
            report.groups += len(assign_groups(engine, st.code, chats[st.code]).assigned)

    def factory() -> Session:
        return Session(engine, expire_on_commit=False)

    staff = store_codes.ensure_staff_codes(factory, client)
    report.staff_codes = staff.created + staff.unchanged
    report.failed += staff.failed
    outcomes = store_codes.refresh_all_group_codes(factory, client, cap=cap, room_base_id=room_base_id)
    report.group_codes = outcomes.get("created", 0) + outcomes.get("updated", 0) + outcomes.get("unchanged", 0)
    report.failed += [f"group code: {n} {k}" for k, n in outcomes.items() if k == "failed"]
    log.info("demo_chain_ready", stores=report.stores, groups=report.groups, staff_codes=report.staff_codes,
             group_codes=report.group_codes, failed=len(report.failed))
    return report
