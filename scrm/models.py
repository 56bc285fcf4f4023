"""Import every table so SQLModel.metadata (Alembic, create_all) sees the whole schema."""

import scrm.auth.models  # noqa: F401  (each domain's tables register themselves)
import scrm.clicks.models  # noqa: F401
import scrm.crm.models  # noqa: F401
import scrm.kpi.funnel_models  # noqa: F401
import scrm.kpi.models  # noqa: F401
import scrm.layers.models  # noqa: F401
from scrm.callbacks.models import CallbackInbox
from scrm.contacts.models import ChurnAlert, Customer, Employee, FollowRelation, WelcomeSend
from scrm.groups.models import CustomerGroup, GroupMember
from scrm.orders.models import CustomerMobile, Order, Refund
from scrm.sop.models import LinkClick, SopPost, TrackedLink
from scrm.stores.models import Store, StoreCode, StoreStaff
from scrm.tags.models import Tag, TagGroup

__all__ = [
    "CallbackInbox",
    "ChurnAlert",
    "Customer",
    "CustomerGroup",
    "CustomerMobile",
    "Employee",
    "FollowRelation",
    "GroupMember",
    "LinkClick",
    "Order",
    "Refund",
    "SopPost",
    "Store",
    "StoreCode",
    "StoreStaff",
    "Tag",
    "TrackedLink",
    "TagGroup",
    "WelcomeSend",
]
