"""The KPI benchmark's data: a store chain with 60 days of SOP posts, tracked links, clicks and
orders, generated with numpy and loaded into PostgreSQL with ``COPY`` (psycopg ``cursor.copy``).

Used by ``bench/kpi.py``. Everything is derived from a seed, so two runs with the same arguments
load the same rows. The shape:

- stores (5 groups each), 600 bots owning the groups, 2 staff members per store with their staff
  QR codes, a group code per store; groups of 20..200 members (some at the 200 cap), customers with
  follow relations (``state`` of the store's staff code; a few deleted by the customer, with churn
  alerts), group joins and leaves;
- per group and local day 3 posts on weekdays and 2 at weekends (slot 1 the day's mass send,
  the others owner tasks), statuses as the ledger ends them (confirmed, sent, expired, over quota,
  failed, unconfirmed); a tracked link on every delivered post, a second one on some;
- clicks: per link a person's visits (a signed customer for some, an anonymous visitor key for
  the rest), repeats by the same visitor within hours (recorded, not counted), link-preview
  fetches and bots (recorded, never counted); ``tracked_links`` counters agree with the clicks;
- orders: some a few hours after a customer's counted click (with the link code as ``from`` on a
  quarter of them), the rest from customers at random (a loyal core buys again), a tenth unmatched
  (a mobile nobody is known by); a tenth refunded, fully or partly.

``--events`` is split ≈ 95 % clicks, ≈ 4.5 % orders and ≈ 0.5 % refunds. The last day ("the
further day") is kept back and loaded afterwards with the indexes in place, for the incremental
rollup refresh. Unique-click decisions are made here (the first visit of a visitor counts, repeats
within the 24 h window do not), so ``click_visitor_state`` is not filled: it only matters to the
flush of new clicks, which the redirect part of the benchmark does on links of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np

CITIES = ["上海", "北京", "深圳", "广州", "杭州", "南京", "成都", "武汉", "西安", "苏州", "天津", "重庆"]
TEMPLATES = 20
HOUR = 3600
DAY = 86400
# Chain size for the full 10,000,000 events; smaller --events scale the chain down with it.
FULL_EVENTS = 10_000_000
FULL_GROUPS = 10_000
GROUPS_PER_STORE = 5
STAFF_PER_STORE = 2
MAX_BOTS = 600
MEMBER_CAP = 200

# Per link: a person's visits ~ Poisson(lam); repeats per visit ~ geometric, mean 0.3;
# previews ~ Poisson(0.10 lam + 0.3) (WeChat's card fetch when the post lands, forwards);
# bots ~ Poisson(0.03 lam + 0.05).
REPEAT_MEAN = 0.3
PREVIEW_PER_VISIT, PREVIEW_BASE = 0.10, 0.3
BOT_PER_VISIT, BOT_BASE = 0.03, 0.05
CUSTOMER_SHARE = 0.3  # visits carrying a signed customer token (mini-program and 1:1 links)
CLICK_SHARE, ORDER_SHARE, REFUND_RATE = 0.95, 0.045, 0.10


@dataclass(frozen=True)
class ChainSpec:
    events: int
    end: dt.date  # the last local day of the main load; the further day is end + 1
    days: int = 60
    groups: int = 0  # 0: scaled from events (10,000 at 10M)
    seed: int = 12
    tz: str = "Asia/Shanghai"

    @property
    def n_groups(self) -> int:
        if self.groups:
            return self.groups
        return max(100, round(FULL_GROUPS * self.events / FULL_EVENTS / GROUPS_PER_STORE) * GROUPS_PER_STORE)

    @property
    def n_stores(self) -> int:
        return max(1, self.n_groups // GROUPS_PER_STORE)

    @property
    def n_bots(self) -> int:
        return max(5, min(MAX_BOTS, self.n_groups * MAX_BOTS // FULL_GROUPS))

    @property
    def first_day(self) -> dt.date:
        return self.end - dt.timedelta(days=self.days - 1)

    @property
    def further_day(self) -> dt.date:
        return self.end + dt.timedelta(days=1)


@dataclass
class LoadStats:
    rows: dict[str, int] = field(default_factory=dict)
    extra_rows: dict[str, int] = field(default_factory=dict)
    clicks: int = 0
    orders: int = 0
    refunds: int = 0
    extra_clicks: int = 0
    extra_orders: int = 0
    extra_refunds: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.clicks + self.orders + self.refunds

    @property
    def extra_events(self) -> int:
        return self.extra_clicks + self.extra_orders + self.extra_refunds


# -- identifiers -------------------------------------------------------------------------------
def store_code(i: int) -> str:
    return f"S{i:05d}"


def chat_id(g: int) -> str:
    return f"wrBk{(g * 0x9E3779B97F4A7C15) % (1 << 64):016x}{g:08d}"


def customer_id(c: int) -> str:
    return f"wm{(c * 0x9E3779B97F4A7C15F39CC061) % (1 << 120):030x}"


def bot_id(b: int) -> str:
    return f"bot{b:04d}"


def staff_id(s: int, k: int) -> str:
    return f"st{s:05d}x{k}"


def link_code(n: int) -> str:
    return f"{(n * 0xD1B54A32D192ED03) % (1 << 48):012x}"


def event_id(n: int) -> str:
    return f"{(n * 0x2545F4914F6CDD1D9E3779B97F4A7C15) % (1 << 128):032x}"


def template_id(t: int) -> str:
    return f"tpl{t:02d}"


# -- COPY plumbing -----------------------------------------------------------------------------
class TimeText:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS' (UTC, naive as the models store it), fast: one
    strftime per distinct minute."""

    def __init__(self) -> None:
        self.minutes: dict[int, str] = {}
        self.secs = [f"{s:02d}" for s in range(60)]

    def one(self, epoch: int) -> str:
        m = epoch // 60
        head = self.minutes.get(m)
        if head is None:
            head = dt.datetime.fromtimestamp(m * 60, dt.UTC).strftime("%Y-%m-%d %H:%M:")
            self.minutes[m] = head
        return head + self.secs[epoch % 60]

    def many(self, epochs: np.ndarray) -> list[str]:
        if not len(epochs):
            return []
        mins, inv = np.unique(epochs // 60, return_inverse=True)
        cache = self.minutes
        heads = []
        for m in mins.tolist():
            head = cache.get(m)
            if head is None:
                head = cache[m] = dt.datetime.fromtimestamp(m * 60, dt.UTC).strftime("%Y-%m-%d %H:%M:")
            heads.append(head)
        secs = self.secs
        return [heads[i] + secs[s] for i, s in zip(inv.tolist(), (epochs % 60).tolist(), strict=True)]


def fill_columns(table, given: list[str]) -> tuple[list[str], str]:
    """The columns a COPY must name besides ``given``: NOT NULL ones without a server default get
    their model default (called once if it is a function), so rows need not spell them out and a
    column another part of scrm adds with a default does not break the load."""
    extra, values = [], []
    for col in table.columns:
        if col.name in given or col.nullable or col.server_default is not None:
            continue
        if col.primary_key and col.autoincrement is not False and col.name == "id":
            raise ValueError(f"{table.name}.id must be given")
        default = col.default
        if default is None:
            raise ValueError(f"{table.name}.{col.name} is NOT NULL without a default: the generator must fill it")
        value = default.arg
        if callable(value):
            try:
                value = value()
            except TypeError:
                value = value(None)
        extra.append(col.name)
        values.append(copy_text(value))
    return extra, "".join("\t" + v for v in values)


def copy_text(value) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class Copier:
    """One COPY ... FROM STDIN per table, on its own connection, open for the whole load, so rows
    of several tables can be produced in one pass."""

    def __init__(self, conninfo: str, tables: dict[str, tuple[object, list[str]]]):
        import psycopg

        self.conns, self.copies, self.cms, self.suffix, self.rows = {}, {}, {}, {}, {}
        for name, (table, columns) in tables.items():
            extra, suffix = fill_columns(table, columns)
            conn = psycopg.connect(conninfo, autocommit=False)
            conn.execute("SET synchronous_commit = off")
            cur = conn.cursor()
            cols = ", ".join(f'"{c}"' for c in columns + extra)
            cm = cur.copy(f'COPY "{name}" ({cols}) FROM STDIN')
            self.copies[name] = cm.__enter__()
            self.conns[name], self.cms[name], self.suffix[name], self.rows[name] = conn, cm, suffix, 0

    def write(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        suffix = self.suffix[name]
        if suffix:
            data = "".join(line + suffix + "\n" for line in lines)
        else:
            data = "\n".join(lines) + "\n"
        self.copies[name].write(data.encode("utf-8"))
        self.rows[name] += len(lines)

    def close(self) -> None:
        for name, cm in self.cms.items():
            cm.__exit__(None, None, None)
            self.conns[name].commit()
            self.conns[name].close()


def nul(v) -> str:
    return r"\N" if v is None else str(v)


# -- the generator -----------------------------------------------------------------------------
class Chain:
    """The chain and its activity as numpy arrays; rows are produced day by day."""

    def __init__(self, spec: ChainSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.tz = ZoneInfo(spec.tz)
        self.tt = TimeText()
        rng = self.rng
        G, S = spec.n_groups, spec.n_stores
        self.group_store = np.arange(G) % S
        self.group_bot = (np.arange(G) * 7919) % spec.n_bots
        sizes = rng.integers(20, MEMBER_CAP + 1, G)
        sizes[rng.random(G) < 0.15] = MEMBER_CAP  # full groups: the store's QR code moves on
        self.group_size = sizes
        self.group_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.n_customers = int(sizes.sum())
        self.group_engage = rng.lognormal(0.0, 0.5, G)  # some stores' groups click more
        self.template_pop = rng.lognormal(0.0, 0.7, TEMPLATES)
        self.customer_group = np.repeat(np.arange(G), sizes)
        self.chat_ids = [chat_id(g) for g in range(G)]
        self._customer_ids: dict[int, str] = {}
        # Day starts (UTC epoch) of every local day, the further day and three more for tails.
        self.day0 = spec.first_day
        self.n_days = spec.days + 1
        self.day_start = np.array([
            int(dt.datetime.combine(self.day0 + dt.timedelta(days=d), dt.time(), self.tz).timestamp())
            for d in range(self.n_days + 4)
        ])
        self.boundary = int(self.day_start[spec.days])  # start of the further day
        self.hard_end = int(self.day_start[spec.days + 1])  # end of the further day
        self.posts = self._plan_posts()
        self.links = self._links()
        # Scale visits so the clicks come to ≈ 95 % of the events.
        L = len(self.links["post"])
        target_clicks = CLICK_SHARE * spec.events
        unscaled = self.links["weight"]
        per_visit = 1 + REPEAT_MEAN + PREVIEW_PER_VISIT + BOT_PER_VISIT
        base = (PREVIEW_BASE + BOT_BASE) * L
        scale = max(target_clicks - base, 0.2 * target_clicks) / per_visit / unscaled.sum()
        self.links["lam"] = unscaled * scale
        visits = float(self.links["lam"].sum())
        target_orders = ORDER_SHARE * spec.events
        # Half the orders follow a customer's counted click, half come from anywhere.
        self.order_after_click = min(0.9, 0.5 * target_orders / max(1.0, CUSTOMER_SHARE * visits))
        self.background_orders_per_day = 0.5 * target_orders / self.n_days
        self.loyal = rng.choice(self.n_customers, max(1, self.n_customers // 20), replace=False)
        self.next_click = 1
        self.next_order = 1
        self.next_refund = 1

    # posts ------------------------------------------------------------------------------------
    def _plan_posts(self) -> dict[str, np.ndarray]:
        rng, spec = self.rng, self.spec
        G = spec.n_groups
        cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                             ("day", "group", "slot", "template", "sched", "status", "sent")}
        slot_hour = np.array([0, 8.5, 12.0, 18.0])
        for d in range(self.n_days):
            date = self.day0 + dt.timedelta(days=d)
            weekend = date.weekday() >= 5
            n = np.full(G, 2 if weekend else 3)
            n[rng.random(G) < 0.1] = 2  # quieter groups
            g = np.repeat(np.arange(G), n)
            starts = np.concatenate([[0], np.cumsum(n)[:-1]])
            slot = np.arange(len(g)) - np.repeat(starts, n) + 1
            base_t = (np.arange(G) * 3 + d * 7) % TEMPLATES
            tpl = (base_t[g] + (slot - 1) * 7) % TEMPLATES
            sched = self.day_start[d] + (slot_hour[slot] * HOUR).astype(np.int64) + rng.integers(0, 1200, len(g))
            u = rng.random(len(g))
            mass = slot == 1
            # 0 confirmed, 1 sent, 2 expired, 3 over_quota, 4 failed, 5 unconfirmed
            status = np.where(mass, np.select([u < 0.93, u < 0.97], [0, 3], 4),
                              np.select([u < 0.80, u < 0.92, u < 0.97], [1, 2, 5], 1))
            delay = np.where(mass, rng.exponential(600, len(g)),
                             np.minimum(rng.exponential(2400, len(g)), 3 * HOUR - 60))
            sent = np.where(np.isin(status, (0, 1, 5)), sched + delay.astype(np.int64), -1)
            for k, v in (("day", np.full(len(g), d)), ("group", g), ("slot", slot), ("template", tpl),
                         ("sched", sched), ("status", status), ("sent", sent)):
                cols[k].append(v)
        out = {k: np.concatenate(v) for k, v in cols.items()}
        out["id"] = np.arange(1, len(out["day"]) + 1)
        return out

    def _links(self) -> dict[str, np.ndarray]:
        p = self.posts
        delivered = np.flatnonzero(p["sent"] >= 0)
        two = self.rng.random(len(delivered)) < 0.2
        post = np.sort(np.concatenate([delivered, delivered[two]]))
        position = np.zeros(len(post), dtype=np.int64)
        position[1:][post[1:] == post[:-1]] = 1
        g = p["group"][post]
        weight = (self.template_pop[p["template"][post]] * self.group_size[g] / 110.0 * self.group_engage[g]
                  * np.where(position == 1, 0.6, 1.0) * np.where(p["status"][post] == 5, 0.5, 1.0))
        return {"post": post, "position": position, "weight": weight, "n": np.arange(1, len(post) + 1)}

    # the whole chain's static rows --------------------------------------------------------------
    def static_rows(self) -> dict[str, list[str]]:
        spec, tt = self.spec, self.tt
        S, G = spec.n_stores, spec.n_groups
        out: dict[str, list[str]] = {}
        out["stores"] = [
            f"{store_code(s)}\t{CITIES[s % len(CITIES)]}{s}号店\t{CITIES[s % len(CITIES)]}路{s}号"
            f"\t{CITIES[s % len(CITIES)]}\t{30 + (s % 97) / 10:.4f}\t{110 + (s % 89) / 10:.4f}\topen"
            for s in range(S)
        ]
        emp = [f"{bot_id(b)}\t群主{b}\tt\tt" for b in range(spec.n_bots)]
        emp += [f"{staff_id(s, k)}\t店员{s}-{k}\tf\tt" for s in range(S) for k in range(STAFF_PER_STORE)]
        out["employees"] = emp
        out["store_staff"] = [f"{store_code(s)}\t{staff_id(s, k)}" for s in range(S) for k in range(STAFF_PER_STORE)]
        codes, n = [], 0
        for s in range(S):
            for k in range(STAFF_PER_STORE):
                n += 1
                codes.append(f"{n}\t{store_code(s)}\tstaff\t{staff_id(s, k)}\tst:{store_code(s)}:{k + 1}"
                             f"\tcfgst{n:08d}\t[]\tactive")
            n += 1
            chats = json.dumps([chat_id(g) for g in range(s, G, S)][:5])
            codes.append(f"{n}\t{store_code(s)}\tgroup\t\tsg:{store_code(s)}\tcfgsg{n:08d}\t{chats}\tactive")
        out["store_codes"] = codes
        created = self.day_start[0] - 120 * DAY
        layers = ["vip", "active", "dormant", r"\N"]
        out["customer_groups"] = [
            f"{chat_id(g)}\t{CITIES[self.group_store[g] % len(CITIES)]}{self.group_store[g]}号店福利群{g // S + 1}"
            f"\t{bot_id(int(self.group_bot[g]))}\tactive\t{store_code(int(self.group_store[g]))}\t[]"
            f"\t{layers[g % 4]}\t{tt.one(int(created + g * 60))}"
            for g in range(G)
        ]
        return out

    def people_rows(self) -> Iterable[tuple[str, list[str]]]:
        """Customers, their follow relations, group memberships and churn, in slices."""
        rng, tt, spec = self.rng, self.tt, self.spec
        C = self.n_customers
        start = int(self.day_start[0] - 60 * DAY)
        span = int(self.boundary - start)
        member_id = 0
        rel_id = 0
        for lo in range(0, C, 200_000):
            hi = min(C, lo + 200_000)
            n = hi - lo
            c = np.arange(lo, hi)
            g = self.customer_group[c]
            joined = start + rng.integers(0, span, n)
            left = rng.random(n) < 0.06
            left_at = joined + rng.integers(HOUR, 20 * DAY, n)
            left = left & (left_at < self.boundary)
            deleted = rng.random(n) < 0.04
            removed_at = joined + rng.integers(HOUR, 30 * DAY, n)
            deleted = deleted & (removed_at < self.boundary)
            has_union = rng.random(n) < 0.5
            via_qr = rng.random(n) < 0.7
            k = rng.integers(0, STAFF_PER_STORE, n)
            j_text = tt.many(joined)
            l_text = tt.many(left_at)
            r_text = tt.many(removed_at)
            ids = [customer_id(x) for x in c.tolist()]
            chats = self.chat_ids
            gl, kl = g.tolist(), k.tolist()
            stores = self.group_store[g].tolist()
            cust, rel, mem, churn = [], [], [], []
            for i in range(n):
                cid = ids[i]
                union = f"oBk{lo + i:025d}" if has_union[i] else r"\N"
                cust.append(f"{cid}\t顾客{lo + i}\t{union}\t1\t[]\t{'lost' if deleted[i] else 'active'}\t{j_text[i]}")
                rel_id += 1
                st = stores[i]
                sc = store_code(st)
                if deleted[i]:
                    rel.append(f"{rel_id}\t{staff_id(st, kl[i])}\t{cid}\tst:{sc}:{kl[i] + 1}\t1\t[]\t[]"
                               f"\tdeleted_by_customer\t{j_text[i]}\t{r_text[i]}\tcustomer")
                    churn.append(f"{rel_id}\t{rel_id}\tcustomer_deleted_employee\t{staff_id(st, kl[i])}\t{cid}"
                                 f"\t{r_text[i]}")
                else:
                    rel.append(f"{rel_id}\t{staff_id(st, kl[i])}\t{cid}\tst:{sc}:{kl[i] + 1}\t1\t[]\t[]"
                               f"\tactive\t{j_text[i]}\t\\N\t\\N")
                member_id += 1
                state = f"sg:{sc}" if via_qr[i] else r"\N"
                if left[i]:
                    mem.append(f"{member_id}\t{chats[gl[i]]}\t{cid}\t2\t{union}\t3\t{state}\tleft\t{j_text[i]}"
                               f"\t{l_text[i]}\t0")
                else:
                    mem.append(f"{member_id}\t{chats[gl[i]]}\t{cid}\t2\t{union}\t3\t{state}\tmember\t{j_text[i]}"
                               f"\t\\N\t\\N")
            yield "customers", cust
            yield "follow_relations", rel
            yield "group_members", mem
            yield "churn_alerts", churn
        # The owner is a member of each of their groups.
        owners = []
        for g in range(spec.n_groups):
            member_id += 1
            owners.append(f"{member_id}\t{chat_id(g)}\t{bot_id(int(self.group_bot[g]))}\t1\t\\N\t\\N\t\\N\tmember"
                          f"\t{tt.one(int(self.day_start[0] - 90 * DAY))}\t\\N\t\\N")
        yield "group_members", owners

    def post_rows(self, d: int) -> tuple[list[str], list[str]]:
        """One day's ledger rows and the tracked links of its delivered posts."""
        p, tt = self.posts, self.tt
        idx = np.flatnonzero(p["day"] == d)
        date = (self.day0 + dt.timedelta(days=d)).isoformat()
        status_names = ["confirmed", "sent", "expired", "over_quota", "failed", "unconfirmed"]
        sched = tt.many(p["sched"][idx])
        window = tt.many(p["sched"][idx] + 3 * HOUR)
        sent_e = p["sent"][idx]
        sent = tt.many(np.maximum(sent_e, 0))
        confirmed = tt.many(np.maximum(sent_e, 0) + 1800)
        rows = []
        for j, i in enumerate(idx.tolist()):
            g = int(p["group"][i])
            slot = int(p["slot"][i])
            st = int(p["status"][i])
            tpl = template_id(int(p["template"][i]))
            mass = slot == 1
            bot = bot_id(int(self.group_bot[g]))
            delivered = sent_e[j] >= 0
            content = (f'{{"text": "模板{tpl} 今日福利", "links": ["https://shop.example.com/p/{tpl}"]}}'
                       if delivered else r"\N")
            rows.append("\t".join((
                str(i + 1), date, self.chat_ids[g], str(slot), "1" if mass else r"\N", tpl, "s1",
                f"{int(p['template'][i]):016x}", "mass_send" if mass else "owner_task", bot,
                str(50 + slot), sched[j], window[j], status_names[st], "1",
                f"msg{i + 1}" if mass and delivered else r"\N",
                "45009" if st == 4 else r"\N",
                content,
                bot if delivered and not mass else r"\N",
                sched[j] if not mass else r"\N",
                sent[j] if delivered else r"\N",
                confirmed[j] if st == 0 else r"\N",
                sched[j],
            )))
        return rows, idx

    # clicks and orders of a day's links ---------------------------------------------------------
    def day_events(self, d: int):
        """Clicks on the links of day ``d``'s posts (times may run into later days) and the
        orders and refunds that follow; returns arrays, and the per-link counters."""
        rng, L, p = self.rng, self.links, self.posts
        li = np.flatnonzero(p["day"][L["post"]] == d)
        post = L["post"][li]
        sent = p["sent"][post]
        g = p["group"][post]
        lam = L["lam"][li]
        nv = rng.poisson(lam)
        npv = rng.poisson(PREVIEW_PER_VISIT * lam + PREVIEW_BASE)
        nb = rng.poisson(BOT_PER_VISIT * lam + BOT_BASE)
        # Visits of people.
        v_link = np.repeat(np.arange(len(li)), nv)
        nvis = len(v_link)
        fast = rng.random(nvis) < 0.6
        delay = np.where(fast, rng.exponential(1800, nvis), rng.exponential(8 * HOUR, nvis))
        v_t = sent[v_link] + np.minimum(delay, 72 * HOUR).astype(np.int64) + 1
        is_cust = rng.random(nvis) < CUSTOMER_SHARE
        cv = np.flatnonzero(is_cust)
        cl = v_link[cv]
        rank = np.arange(len(cv)) - np.searchsorted(cl, cl, side="left")
        size = self.group_size[g[cl]]
        ok = rank < size
        is_cust[cv[~ok]] = False
        cv, cl, rank, size = cv[ok], cl[ok], rank[ok], size[ok]
        offset = rng.integers(0, 1 << 30, len(li))
        customer = np.full(nvis, -1, dtype=np.int64)
        customer[cv] = self.group_start[g[cl]] + (offset[cl] + rank) % size
        # Repeats of a visit: the same visitor within hours (inside the 24 h window).
        reps = rng.geometric(1 / (1 + REPEAT_MEAN), nvis) - 1
        parent = np.repeat(np.arange(nvis), reps)
        r_t = v_t[parent] + np.minimum(rng.exponential(2400, len(parent)), 20 * HOUR).astype(np.int64) + 1
        # Previews and bots.
        p_link = np.repeat(np.arange(len(li)), npv)
        quick = rng.random(len(p_link)) < 0.7
        p_t = sent[p_link] + np.where(quick, rng.integers(0, 120, len(p_link)),
                                      np.minimum(rng.exponential(6 * HOUR, len(p_link)), 72 * HOUR).astype(np.int64))
        b_link = np.repeat(np.arange(len(li)), nb)
        b_t = sent[b_link] + rng.integers(0, 48 * HOUR, len(b_link))
        # One event table: kind 0 counted visit, 1 repeat, 2 preview, 3 bot.
        anon = rng.integers(0, 1 << 62, (nvis + len(p_link) + len(b_link), 2))
        vis_anon = np.arange(nvis)
        ev = {
            "link": np.concatenate([v_link, v_link[parent], p_link, b_link]),
            "t": np.concatenate([v_t, r_t, p_t, b_t]),
            "kind": np.concatenate([np.zeros(nvis, np.int8), np.ones(len(parent), np.int8),
                                    np.full(len(p_link), 2, np.int8), np.full(len(b_link), 3, np.int8)]),
            "customer": np.concatenate([customer, customer[parent], np.full(len(p_link) + len(b_link), -1)]),
            "anon": np.concatenate([vis_anon, vis_anon[parent], np.arange(nvis, nvis + len(p_link) + len(b_link))]),
            "sub": rng.integers(0, 100, nvis + len(parent) + len(p_link) + len(b_link)),
        }
        keep = ev["t"] < self.hard_end
        order = np.argsort(ev["t"][keep], kind="stable")
        ev = {k: v[keep][order] for k, v in ev.items()}
        ev["code_n"] = L["n"][li][ev["link"]]
        ev["link_global"] = li[ev["link"]]
        return ev, anon, g

    def click_rows(self, ev, anon, codes: list[str]) -> list[str]:
        tt = self.tt
        n = len(ev["t"])
        first = self.next_click
        self.next_click += n
        times = tt.many(ev["t"])
        kinds = ev["kind"].tolist()
        custs = ev["customer"].tolist()
        anons = ev["anon"].tolist()
        subs = ev["sub"].tolist()
        links = ev["link"].tolist()
        a0, a1 = anon[:, 0].tolist(), anon[:, 1].tolist()
        rows = []
        person_reasons = ("wechat",) * 70 + ("wecom",) * 20 + ("browser",) * 10
        for j in range(n):
            k = kinds[j]
            c = custs[j]
            if c >= 0:
                ext = customer_id(c)
                visitor = "c:" + ext
            else:
                a = anons[j]
                visitor = f"a:{a0[a]:016x}{a1[a]:016x}"
                ext = r"\N"
            if k == 0:
                tail = f"person\t{person_reasons[subs[j]]}\tcounted\tt\t{ext}"
            elif k == 1:
                tail = f"person\t{person_reasons[subs[j]]}\trepeat\tf\t{ext}"
            elif k == 2:
                tail = ("preview\tprefetch_header" if subs[j] < 30 else "preview\tpreview_fetcher") + \
                    "\tnot_a_person\tf\t\\N"
            else:
                tail = ("bot\tcrawler" if subs[j] < 60 else "bot\thttp_library") + "\tnot_a_person\tf\t\\N"
            i = first + j
            rows.append(f"{i}\t{event_id(i)}\t{codes[links[j]]}\t{times[j]}\t{visitor}\t{tail}")
        return rows

    def order_events(self, d: int, ev, group_of_link) -> dict[str, np.ndarray]:
        """Orders of day ``d``: after counted customer clicks of this day's links, plus background."""
        rng = self.rng
        counted = np.flatnonzero((ev["kind"] == 0) & (ev["customer"] >= 0))
        pick = counted[rng.random(len(counted)) < self.order_after_click]
        c_t = ev["t"][pick] + np.minimum(rng.exponential(2 * HOUR, len(pick)), 23 * HOUR).astype(np.int64) + 1
        c_cust = ev["customer"][pick]
        c_link = ev["code_n"][pick]
        c_store = self.group_store[group_of_link[ev["link"][pick]]]
        nb = rng.poisson(self.background_orders_per_day)
        loyal = rng.random(nb) < 0.3
        b_cust = np.where(loyal, self.loyal[rng.integers(0, len(self.loyal), nb)],
                          rng.integers(0, self.n_customers, nb))
        b_t = self.day_start[d] + rng.integers(0, DAY, nb)
        b_store = self.group_store[self.customer_group[b_cust]]
        return {
            "t": np.concatenate([c_t, b_t]),
            "customer": np.concatenate([c_cust, b_cust]),
            "link": np.concatenate([np.where(rng.random(len(pick)) < 0.25, c_link, -1), np.full(nb, -1)]),
            "store": np.concatenate([c_store, b_store]),
            "store_given": rng.random(len(pick) + nb) < 0.3,
            "match": rng.random(len(pick) + nb),
            "amount": (np.round(rng.lognormal(np.log(3500), 0.6, len(pick) + nb) / 10) * 10 + 10).astype(np.int64),
            "refund": rng.random(len(pick) + nb) < REFUND_RATE,
            "refund_full": rng.random(len(pick) + nb) < 0.6,
            "refund_part": rng.uniform(0.2, 0.8, len(pick) + nb),
            "refund_delay": np.minimum(rng.exponential(2 * DAY, len(pick) + nb), 20 * DAY).astype(np.int64) + HOUR,
        }

    def order_rows(self, o: dict[str, np.ndarray]) -> tuple[list[str], list[str], list[str], list[str]]:
        """(base orders, extra orders, base refunds, extra refunds) as COPY lines."""
        keep = o["t"] < self.hard_end
        o = {k: v[keep] for k, v in o.items()}
        times = self.tt.many(o["t"])
        r_epoch = o["t"] + o["refund_delay"]
        r_times = self.tt.many(r_epoch)
        base_o, extra_o, base_r, extra_r = [], [], [], []
        for j in range(len(o["t"])):
            oid = self.next_order
            self.next_order += 1
            cust = customer_id(int(o["customer"][j]))
            amount = int(o["amount"][j])
            m = o["match"][j]
            if m < 0.7:
                given, matched = f"{cust}\t\\N\t\\N", f"{cust}\texternal_userid"
            elif m < 0.8:
                given, matched = f"\\N\toBk{int(o['customer'][j]):025d}\t\\N", f"{cust}\tunionid"
            elif m < 0.9:
                given, matched = f"\\N\t\\N\t+86139{int(o['customer'][j]) % 100000000:08d}", f"{cust}\tmobile"
            else:  # a mobile nobody is known by
                given, matched = f"\\N\t\\N\t+86188{oid % 100000000:08d}", "\\N\t\\N"
            link = int(o["link"][j])
            store = store_code(int(o["store"][j])) if o["store_given"][j] else r"\N"
            items = f'[{{"sku": "SKU{amount % 97:03d}", "qty": 1, "price_fen": {amount}}}]'
            refunded = 0
            refund_line = None
            r_t = int(r_epoch[j])
            if o["refund"][j] and r_t < self.hard_end:
                ra = amount if o["refund_full"][j] else max(1, int(amount * o["refund_part"][j]))
                rid = self.next_refund
                self.next_refund += 1
                refund_line = f"{rid}\tRF{rid:010d}\t{oid}\tOD{oid:012d}\t{ra}\t{r_times[j]}\t{r_times[j]}"
                if r_t < self.boundary:
                    refunded = ra
                    base_r.append(refund_line)
                else:
                    extra_r.append(refund_line)
            line = (f"{oid}\tOD{oid:012d}\t{times[j]}\t{amount}\t{refunded}\t{items}\t{store}"
                    f"\t{link_code(link) if link >= 0 else chr(92) + 'N'}\t\\N\t{given}\t{matched}\t{times[j]}")
            (base_o if o["t"][j] < self.boundary else extra_o).append(line)
        return base_o, extra_o, base_r, extra_r


COLUMNS = {
    "stores": ["code", "name", "address", "city", "latitude", "longitude", "status"],
    "employees": ["userid", "name", "is_bot", "active"],
    "store_staff": ["store_code", "userid"],
    "store_codes": ["id", "store_code", "kind", "userid", "state", "config_id", "chat_ids", "status"],
    "customer_groups": ["chat_id", "name", "owner_userid", "status", "store_code", "tags", "layer", "created_at"],
    "customers": ["external_userid", "name", "unionid", "type", "mobiles", "status", "created_at"],
    "follow_relations": ["id", "userid", "external_userid", "state", "add_way", "tag_ids", "remark_mobiles",
                         "status", "added_at", "removed_at", "removed_by"],
    "group_members": ["id", "chat_id", "member_id", "member_type", "unionid", "join_scene", "join_state", "state",
                      "joined_at", "left_at", "quit_scene"],
    "churn_alerts": ["id", "inbox_id", "kind", "userid", "external_userid", "occurred_at"],
    "sop_posts": ["id", "day", "chat_id", "slot", "mass_seq", "template_id", "step_key", "template_digest",
                  "channel", "sender", "priority", "scheduled_for", "window_ends_at", "status", "attempts", "msgid",
                  "errcode", "content", "sent_by", "reminded_at", "sent_at", "confirmed_at", "created_at"],
    "tracked_links": ["code", "post_id", "position", "chat_id", "template_id", "day", "url", "clicks",
                      "unique_clicks", "first_clicked_at", "last_clicked_at", "created_at"],
    "link_clicks": ["id", "event_id", "code", "clicked_at", "visitor", "agent", "agent_reason", "reason", "counted",
                    "external_userid"],
    "orders": ["id", "order_id", "paid_at", "amount_fen", "refunded_fen", "items", "store_code", "link_code",
               "from_param", "given_external_userid", "given_unionid", "given_mobile", "external_userid",
               "matched_by", "created_at"],
    "order_refunds": ["id", "refund_id", "order_pk", "order_id", "amount_fen", "refunded_at", "created_at"],
}
EVENT_TABLES = ("sop_posts", "tracked_links", "link_clicks", "orders", "order_refunds")
# Tables whose secondary indexes are dropped during the main load and rebuilt after it.
BIG_TABLES = ("customers", "follow_relations", "group_members", "churn_alerts") + EVENT_TABLES


@dataclass
class Extra:
    """The further day, held back: COPY lines per table."""

    lines: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in EVENT_TABLES})


def link_rows(chain: Chain, li: np.ndarray, counters: dict[str, np.ndarray], codes: list[str]) -> list[str]:
    L, p, tt = chain.links, chain.posts, chain.tt
    post = L["post"][li]
    first = tt.many(np.maximum(counters["first"], 0))
    last = tt.many(np.maximum(counters["last"], 0))
    created = tt.many(p["sent"][post])
    rows = []
    for j, i in enumerate(li.tolist()):
        pi = int(post[j])
        tpl = template_id(int(p["template"][pi]))
        day = (chain.day0 + dt.timedelta(days=int(p["day"][pi]))).isoformat()
        has = counters["clicks"][j] > 0
        rows.append(f"{codes[j]}\t{pi + 1}\t{int(L['position'][i])}\t{chain.chat_ids[int(p['group'][pi])]}"
                    f"\t{tpl}\t{day}\thttps://shop.example.com/p/{tpl}?pos={int(L['position'][i])}"
                    f"\t{int(counters['clicks'][j])}\t{int(counters['unique'][j])}"
                    f"\t{first[j] if has else chr(92) + 'N'}\t{last[j] if has else chr(92) + 'N'}\t{created[j]}")
    return rows


def generate(chain: Chain, copier: Copier, progress: Callable[[str], None]) -> tuple[LoadStats, Extra]:
    """Stream the main load into ``copier``; keep the further day back in an :class:`Extra`."""
    stats, extra = LoadStats(), Extra()
    t0 = time.perf_counter()
    for table, lines in chain.static_rows().items():
        copier.write(table, lines)
    for table, lines in chain.people_rows():
        copier.write(table, lines)
    stats.seconds["chain"] = time.perf_counter() - t0
    progress(f"chain: {chain.spec.n_stores:,} stores, {chain.spec.n_groups:,} groups, {chain.spec.n_bots} bots, "
             f"{chain.n_customers:,} customers ({stats.seconds['chain']:.1f} s)")
    t1 = time.perf_counter()
    days = chain.n_days
    base_day = chain.spec.days
    for d in range(days):
        posts, _ = chain.post_rows(d)
        ev, anon, group_of_link = chain.day_events(d)
        base = ev["t"] < chain.boundary
        li_all = np.flatnonzero(chain.posts["day"][chain.links["post"]] == d)
        # Per-link counters from the clicks loaded with the link (later ones update them after).
        person = (ev["kind"] <= 1) & base
        counted = (ev["kind"] == 0) & base
        nlinks = len(li_all)
        counters = {
            "clicks": np.bincount(ev["link"][person], minlength=nlinks),
            "unique": np.bincount(ev["link"][counted], minlength=nlinks),
            "first": np.full(nlinks, np.iinfo(np.int64).max),
            "last": np.full(nlinks, -1),
        }
        np.minimum.at(counters["first"], ev["link"][person], ev["t"][person])
        np.maximum.at(counters["last"], ev["link"][person], ev["t"][person])
        counters["first"][counters["first"] == np.iinfo(np.int64).max] = 0
        codes = [link_code(n) for n in chain.links["n"][li_all].tolist()]
        links = link_rows(chain, li_all, counters if d < base_day else
                          {k: (np.zeros(nlinks, np.int64)) for k in counters}, codes)
        clicks = chain.click_rows(ev, anon, codes)
        nbase = int(base.sum())  # events are sorted by time: the base ones come first
        orders = chain.order_events(d, ev, group_of_link)
        base_o, extra_o, base_r, extra_r = chain.order_rows(orders)
        if d < base_day:
            copier.write("sop_posts", posts)
            copier.write("tracked_links", links)
        else:
            extra.lines["sop_posts"] += posts
            extra.lines["tracked_links"] += links
        copier.write("link_clicks", clicks[:nbase])
        extra.lines["link_clicks"] += clicks[nbase:]
        copier.write("orders", base_o)
        copier.write("order_refunds", base_r)
        extra.lines["orders"] += extra_o
        extra.lines["order_refunds"] += extra_r
        stats.clicks += nbase
        stats.extra_clicks += len(clicks) - nbase
        stats.orders += len(base_o)
        stats.extra_orders += len(extra_o)
        stats.refunds += len(base_r)
        stats.extra_refunds += len(extra_r)
        if d % 10 == 9 or d == days - 1:
            el = time.perf_counter() - t1
            progress(f"day {d + 1:>2}/{days}: {stats.events:>11,} events loaded, {stats.extra_events:,} held for "
                     f"the further day ({stats.events / el:,.0f} events/s)")
    stats.seconds["events"] = time.perf_counter() - t1
    stats.rows = dict(copier.rows)
    stats.extra_rows = {t: len(v) for t, v in extra.lines.items()}
    return stats, extra
