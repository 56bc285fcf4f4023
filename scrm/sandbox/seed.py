"""A demo corp for ``scrm run``: a chain's 3 stores with employees, customers, groups, tags,
contact ways and join ways. Seeding posts no callbacks (it is the corp as it already was)."""

from __future__ import annotations

from scrm.sandbox.users import Sandbox

STORES = [
    # (store tag, employees (userid, name), group name, state)
    ("三里屯店", [("zhangsan", "张三"), ("lisi", "李四")], "三里屯店福利群1", "store_sanlitun"),
    ("望京店", [("wangwu", "王五"), ("zhaoliu", "赵六")], "望京店福利群1", "store_wangjing"),
    ("五道口店", [("sunqi", "孙七")], "五道口店福利群1", "store_wudaokou"),
]
CUSTOMERS = ["王语嫣", "段誉", "乔峰", "虚竹", "阿朱", "阿紫", "木婉清", "钟灵", "慕容复", "游坦之", "梅剑", "兰剑"]
LAYERS = ["新客", "活跃", "沉睡"]


def seed_demo(sandbox: Sandbox) -> dict:
    """Fill ``sandbox`` with the demo corp; returns the ids created."""
    with sandbox.lock:
        sandbox.add_member("admin", "运营小管")
        store_tags: dict[str, str] = {}
        layer_tags: dict[str, str] = {}
        for store, _, _, _ in STORES:
            tag, grp, _ = sandbox.create_tag(store, group_name="门店")
            store_tags[store] = tag.id
        for layer in LAYERS:
            tag, _, _ = sandbox.create_tag(layer, group_name="用户分层")
            layer_tags[layer] = tag.id
        out: dict = {"stores": [], "tag_groups": {"门店": store_tags, "用户分层": layer_tags}}
        base = sandbox.now() - 30 * 86400
        i = 0
        for store, employees, group_name, state in STORES:
            for uid, name in employees:
                sandbox.add_member(uid, name)
            owner = employees[0][0]
            customers = []
            for _ in range(4):
                name = CUSTOMERS[i % len(CUSTOMERS)]
                c = sandbox.add_customer(name, gender=1 + i % 2, avatar=f"https://sandbox.invalid/avatar/{i}.png")
                emp = employees[i % len(employees)][0]
                sandbox.add_follow(emp, c.external_userid, createtime=base + i * 86400, state=state, add_way=1,
                                   tag_ids=[store_tags[store], layer_tags[LAYERS[i % 3]]], remark=f"{name}({store})")
                customers.append(c.external_userid)
                i += 1
            members = [u for u, _ in employees[1:]] + customers[:3]
            g = sandbox.create_group(owner, group_name, members)
            way = sandbox.api_add_contact_way({"type": 2, "scene": 2, "state": state, "remark": f"{store}导购码",
                                               "user": [u for u, _ in employees]})
            jw = sandbox.api_add_join_way({"scene": 2, "chat_id_list": [g.chat_id], "auto_create_room": 1,
                                           "room_base_name": store + "福利群", "room_base_id": 2,
                                           "state": state + "_grp", "remark": f"{store}群活码"})
            out["stores"].append({"store": store, "employees": [u for u, _ in employees], "customers": customers,
                                  "chat_id": g.chat_id, "contact_way": way, "join_way_config_id": jw["config_id"]})
        return out
