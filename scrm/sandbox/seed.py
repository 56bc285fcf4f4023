"""The demo corp for ``scrm run``: the store chain of ``demo_chain.DEMO_STORES`` as a WeCom corp
(members, customers following a store's staff, the stores' customer groups, the 门店 and 用户分层
tag groups, one staff contact way and one group join way per store). Seeding posts no callbacks
(it is the corp as it already was) and creates nothing on scrm's side.
"""

from __future__ import annotations

from scrm.sandbox.demo_chain import (
    CUSTOMERS_PER_STORE,
    DEMO_ADMIN,
    DEMO_CUSTOMER_NAMES,
    DEMO_LAYERS,
    DEMO_STORES,
    DemoStore,
)
from scrm.sandbox.users import Sandbox

STORE_TAG_GROUP = "门店"
LAYER_TAG_GROUP = "用户分层"


def seed_demo(sandbox: Sandbox, stores: tuple[DemoStore, ...] = DEMO_STORES) -> dict:
    """Build the demo chain in ``sandbox`` and return (and keep as ``sandbox.demo``, saved with a
    durable corp) what was created::

        {"admin": "admin",
         "stores": [{"code": "BJ001", "name": "三里屯店", "city": "北京", "staff": ["zhangsan", "lisi"],
                     "owner": "zhangsan", "chat_ids": [...], "customers": [...], "tag_id": "et…",
                     "contact_way": {"config_id", "state"}, "join_way": {"config_id", "state"},
                     "join_way_config_id": "…", "chat_id": chat_ids[0], "store": name, "employees": staff},
                    ...],   # the last four: the names this mapping had before
         "tag_groups": {"门店": {store name: tag_id}, "用户分层": {layer: tag_id}}}

    A corp that was already seeded is not seeded again: its ``sandbox.demo`` is returned."""
    with sandbox.lock:
        if sandbox.demo is not None:
            return sandbox.demo
        sandbox.add_member(*DEMO_ADMIN)
        store_tags: dict[str, str] = {}
        layer_tags: dict[str, str] = {}
        for store in stores:
            tag, _, _ = sandbox.create_tag(store.name, group_name=STORE_TAG_GROUP)
            store_tags[store.name] = tag.id
        for layer in DEMO_LAYERS:
            tag, _, _ = sandbox.create_tag(layer, group_name=LAYER_TAG_GROUP)
            layer_tags[layer] = tag.id
        out: dict = {"admin": DEMO_ADMIN[0], "stores": [],
                     "tag_groups": {STORE_TAG_GROUP: store_tags, LAYER_TAG_GROUP: layer_tags}}
        base = sandbox.now() - 30 * 86400
        i = 0  # customers created so far: names, genders, layers and add dates rotate with it
        for store in stores:
            staff = [uid for uid, _ in store.staff]
            for uid, name in store.staff:
                sandbox.add_member(uid, name)
            customers = []
            for k in range(CUSTOMERS_PER_STORE):
                name = DEMO_CUSTOMER_NAMES[i % len(DEMO_CUSTOMER_NAMES)]
                c = sandbox.add_customer(name, gender=1 + i % 2, avatar=f"https://sandbox.invalid/avatar/{i}.png")
                sandbox.add_follow(staff[k % len(staff)], c.external_userid, createtime=base + i * 3600 * 7,
                                   state=store.state, add_way=1, remark=f"{name}({store.name})",
                                   tag_ids=[store_tags[store.name], layer_tags[DEMO_LAYERS[i % len(DEMO_LAYERS)]]])
                customers.append(c.external_userid)
                i += 1
            chat_ids = []
            for n, group_name in enumerate(store.group_names):
                # the other staff, and the store's customers dealt out over its groups
                members = staff[1:] + customers[n :: len(store.group_names)]
                # made after the customers were added (base + at most a week), so the demo's past
                # posts reach members who were already in their groups
                chat_ids.append(sandbox.create_group(store.owner, group_name, members,
                                                     created_at=base + 10 * 86400).chat_id)
            way = sandbox.api_add_contact_way({"type": 2, "scene": 2, "state": store.state,
                                               "remark": f"{store.name}导购码", "user": staff})
            join_way = sandbox.api_add_join_way({
                "scene": 2, "chat_id_list": chat_ids[:5], "auto_create_room": 1,
                "room_base_name": f"{store.name}福利群", "room_base_id": len(chat_ids) + 1,
                "state": f"{store.state}_grp", "remark": f"{store.name}群活码"})
            out["stores"].append({
                "code": store.code, "name": store.name, "city": store.city, "staff": staff, "owner": store.owner,
                "chat_ids": chat_ids, "customers": customers, "tag_id": store_tags[store.name],
                # qr_code is not kept: its URL depends on where the sandbox is served (get_contact_way)
                "contact_way": {"config_id": way["config_id"], "state": store.state},
                "join_way": {"config_id": join_way["config_id"], "state": f"{store.state}_grp"},
                "join_way_config_id": join_way["config_id"],
                # the names this mapping had before the chain had codes
                "store": store.name, "employees": staff, "chat_id": chat_ids[0],
            })
        sandbox.demo = out
        sandbox._changed()
    sandbox.flush()
    return out
