"""A customer who scans a store's staff QR code is welcomed with the store's card and tagged with
the store: the worker reads that store once for both (it read it twice, once per router call).

Mutation checked: ``_fetch`` calling ``on_new_contact`` without ``store=`` (the router reads the
store again): 2 reads of ``stores`` instead of 1, the test failed.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event

from scrm.stores import service as stores
from tests.routing.test_store_qr_routing import code, h  # noqa: F401 - the routed corp fixture

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def test_a_store_scan_reads_the_store_once_and_still_welcomes_and_tags(h):  # noqa: F811
    stores.ensure_staff_codes(h.factory, h.client)
    staff_code = code(h, "A", "staff", "a_staff")
    seen: list[str] = []

    def on(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(h.engine, "before_cursor_execute", on)
    try:
        scan = h.sandbox.scan_contact_way(staff_code.config_id, name="王小姐")
        h.drain()
    finally:
        event.remove(h.engine, "before_cursor_execute", on)
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "FROM stores" in s]
    assert len(reads) == 1, reads
    [follow] = h.sandbox.follows_of_customer(scan["external_userid"])
    assert [h.sandbox.tags[t].name for t in follow.tag_ids] == ["南京西路店"]
    [welcome] = h.sandbox.welcome_messages
    assert welcome["attachments"][0]["link"]["url"] == "http://scrm/g/A"
    assert "南京西路店" in welcome["text"]
