"""Roles and the signed-in person the pages and APIs check, shared by sign-in and every page.

Roles: a manager sees everything; an operator sees SOP and KPI pages for every store; store staff
see their own store(s) only; a sales rep sees their own customers (CRM pages) and no KPIs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    manager = "manager"
    operator = "operator"
    store_staff = "store_staff"
    sales_rep = "sales_rep"


ROLE_NAMES = {Role.manager: "店长/区域经理", Role.operator: "社群运营", Role.store_staff: "门店店员",
              Role.sales_rep: "销售"}


class Forbidden(Exception):
    """The signed-in person may not see this; the message is Chinese and says why."""


@dataclass(frozen=True)
class Principal:
    userid: str
    name: str
    roles: frozenset[Role]
    stores: frozenset[str] = field(default_factory=frozenset)  # store codes granted with store_staff

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def sees_all_stores(self) -> bool:
        return self.has(Role.manager, Role.operator)

    @property
    def may_see_kpis(self) -> bool:
        return self.has(Role.manager, Role.operator, Role.store_staff)

    def visible_stores(self) -> frozenset[str] | None:
        """None: every store; else the stores this person may see (possibly none)."""
        if self.sees_all_stores:
            return None
        if Role.store_staff in self.roles:
            return self.stores
        return frozenset()

    def require_store(self, store_code: str) -> None:
        visible = self.visible_stores()
        if visible is not None and store_code not in visible:
            raise Forbidden("你只能查看自己门店的数据")
