"""The demo corp's store chain, as data: six stores in three cities, their staff (WeCom members)
and their customer groups. ``seed_demo`` builds the sandbox corp from it; scrm's own demo wiring
reads the same tuple to create the scrm-side stores (codes, addresses, coordinates) and attach
the groups ``seed_demo`` reports per store code.

Coordinates are WGS-84 (what GPS and the browser's geolocation give), not the GCJ-02 of Chinese
map apps, which is a few hundred metres off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STORE_CODE = re.compile(r"[A-Za-z0-9_-]{1,20}")


@dataclass(frozen=True)
class DemoStore:
    code: str
    name: str
    city: str
    address: str
    latitude: float
    longitude: float
    # (userid, name) of the WeCom members who work there; the first owns the store's groups.
    staff: tuple[tuple[str, str], ...]
    group_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not STORE_CODE.fullmatch(self.code):
            raise ValueError(f"store code {self.code!r} must match [A-Za-z0-9_-]{{1,20}}")
        if not self.staff:
            raise ValueError(f"store {self.code} needs at least one staff member")

    @property
    def owner(self) -> str:
        """The member who owns the store's customer groups."""
        return self.staff[0][0]

    @property
    def state(self) -> str:
        """The ``state`` of the store's staff contact way (≤30 characters, WeCom reference §3.4)."""
        return "store_" + self.code.lower()


DEMO_STORES: tuple[DemoStore, ...] = (
    DemoStore("BJ001", "三里屯店", "北京", "北京市朝阳区三里屯路19号院太古里南区", 39.93370, 116.45430,
              (("zhangsan", "张三"), ("lisi", "李四")), ("三里屯店福利群1", "三里屯店福利群2")),
    DemoStore("BJ002", "望京店", "北京", "北京市朝阳区望京街10号望京SOHO", 39.99590, 116.47420,
              (("wangwu", "王五"), ("zhaoliu", "赵六")), ("望京店福利群1",)),
    DemoStore("BJ003", "五道口店", "北京", "北京市海淀区成府路28号五道口购物中心", 39.99270, 116.33170,
              (("sunqi", "孙七"),), ("五道口店福利群1",)),
    DemoStore("SH001", "南京西路店", "上海", "上海市静安区南京西路1266号恒隆广场", 31.22800, 121.44960,
              (("zhoumin", "周敏"), ("wulei", "吴磊"), ("zhengjie", "郑洁")),
              ("南京西路店福利群1", "南京西路店福利群2")),
    DemoStore("SH002", "陆家嘴店", "上海", "上海市浦东新区世纪大道8号国金中心商场", 31.23740, 121.49740,
              (("chenjing", "陈静"), ("linfeng", "林峰")), ("陆家嘴店福利群1",)),
    DemoStore("SZ001", "科技园店", "深圳", "深圳市南山区科苑南路2666号中国华润大厦", 22.51820, 113.94870,
              (("huangtao", "黄涛"), ("heli", "何丽")), ("科技园店福利群1",)),
)

# The corp's operator (not a store's staff).
DEMO_ADMIN = ("admin", "运营小管")

# Customers' display names, handed out in turn.
DEMO_CUSTOMER_NAMES = (
    "王语嫣", "段誉", "乔峰", "虚竹", "阿朱", "阿紫", "木婉清", "钟灵", "慕容复", "游坦之", "梅剑", "兰剑",
    "黄蓉", "郭靖", "杨过", "小龙女", "令狐冲", "任盈盈", "张无忌", "赵敏", "周芷若", "小昭", "程灵素", "胡斐",
)

# The 用户分层 tags, given to customers in turn.
DEMO_LAYERS = ("新客", "活跃", "沉睡")

CUSTOMERS_PER_STORE = 4
