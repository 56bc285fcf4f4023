"""Rule tags in WeCom: corp tags in one tag group scrm owns, applied per follow relation with
``mark_tag``, and reconciled with what people do in WeCom (issue 13, reference §2.3, §3.3, §3.10).

What a customer should carry (``desired_tags``): ``layer:<layer id>``, ``store:<home store>``,
``city:<its city>`` and ``tag:<tag rule id>`` for each condition tag that holds, each named from the
rules' ``TagSettings`` and the stores table. A key maps to a WeCom tag id in ``rule_tags`` (by key,
never by name): a rename in the YAML is an ``edit_corp_tag`` of the same id; a tag with the same name
elsewhere is never adopted, only one already in scrm's group.

Tags scrm never adds or removes: any tag outside scrm's group, and any tag in the group that is not
a rule tag. A relation's ``remove`` is ``(current ∩ scrm's rule tag ids) - desired`` and nothing else.

Choices (each says why):

- **Reconciled, not fought.** A rule tag a person renamed in WeCom keeps its id and its new name is
  accepted; scrm renames it only when the rule's own name changes later (``rule_tags.rule_name``).
  A rule tag (or scrm's group) deleted in WeCom is forgotten, the customers who carried it are
  marked dirty, and the next sync creates it again and re-applies it.
- **A tag a person took off a relation stays off.** When a rule tag scrm applied (``rule_tag_marks``)
  is no longer on the relation, a person removed it in WeCom: the mark records the override and
  scrm does not put it back *while the customer keeps qualifying for that tag*. The override ends
  when the tag stops being one of the customer's desired tags (e.g. they leave the layer), so if
  they qualify again later it is applied again; a person putting it back also ends it. Why per tag
  and not "until anything changes": a store or condition tag changing says nothing about whether
  the person still wants the layer tag off.
- **Limits.** ``mark_tag`` calls go through a limiter of ``layers.mark_tag_per_minute`` in any
  rolling 60 s: one shared by every process through Redis (``RedisRateLimiter``: a sorted set of
  call times, checked and added in one Lua script), or, without Redis, per process
  (``LocalRateLimiter``, give it the setting divided by the number of processes). 45009/45033 are
  retried by the client with backoff (``WeComClient._with_backoff``); if WeCom still refuses, the
  run stops (what is left stays dirty). -1 and transport errors also stop the run: every later
  call would fail the same way.
- **Failures.** A relation that fails leaves its customer dirty (``rule_tag_failures`` says what WeCom
  said); the next runs take customers that have not failed first, so one relation WeCom keeps
  refusing does not hold up the rest. 84061 (not that member's contact any more) is not a failure:
  the relation is gone in WeCom and there is nothing to tag. 40068 (a tag deleted in WeCom
  meanwhile) re-reads the library, reconciles, creates the tag again and retries the relation once.
- **Dirty flag.** Cleared only for customers all of whose active relations succeeded, and only if
  their ``customer_layers`` row was not recomputed meanwhile (conditional on ``computed_at``) and
  every rule tag applied still exists.
- Known window: a tag event's library read that was fetched before scrm created a tag and applied
  after may mark scrm's tag deleted in the mirror; reconcile asks WeCom by id before forgetting.
- One sync at a time (the scheduler's job): two at once would race on the marks they record.
- WeCom lets an app edit only the tags it created: a tag adopted from scrm's group that a person
  made cannot be renamed by a YAML change; the refusal is logged (``rule_tag_rename_failed``) and
  retried each run. A rename whose new name another tag in the group holds (40071) likewise waits.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, case, delete, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scrm.contacts.models import FollowRelation, FollowStatus
from scrm.layers.models import CustomerLayer
from scrm.layers.rules import WECOM_TAG_NAME_MAX, RuleSet
from scrm.logs import get_logger
from scrm.stores.models import Store
from scrm.tags import service as tag_library
from scrm.tags.models import RuleTag, RuleTagFailure, RuleTagMark, Tag, TagGroup
from scrm.wecom.errors import RateLimited, SystemBusy, TransportError, WeComAPIError

if TYPE_CHECKING:
    from redis import Redis

    from scrm.config import Settings

log = get_logger(__name__)

GROUP_KEY = "group"
INVALID_TAG = 40068  # invalid tag id (deleted in WeCom meanwhile)
TAG_NAME_EXISTS = 40071
NOT_CONTACT = 84061
ADD_BATCH = 100  # tags per add_corp_tag call
IN_CHUNK = 500  # ids per SQL IN list


class TagSyncError(RuntimeError):
    """The rule tags cannot be put in WeCom (e.g. the group cannot be created): nothing is marked."""


class CorpTags(Protocol):
    """The WeCom calls the sync makes (WeComClient has them; reference §3.3)."""

    def get_corp_tags(self, tag_ids: Sequence[str] | None = None,
                      group_ids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    def add_corp_tag(self, *, group_name: str | None = None, group_id: str | None = None,
                     tags: list[dict[str, Any]], order: int | None = None) -> dict[str, Any]: ...

    def edit_corp_tag(self, id: str, *, name: str | None = None, order: int | None = None) -> None: ...

    def mark_tag(self, userid: str, external_userid: str, *, add: Sequence[str] = (),
                 remove: Sequence[str] = ()) -> None: ...


# -- the limiter --------------------------------------------------------------------------------
class RateLimiter(Protocol):
    def acquire(self) -> float:
        """Block until one more call is allowed; returns the seconds waited."""
        ...


class LocalRateLimiter:
    """At most ``per_minute`` calls in any rolling 60 s, in this process (thread-safe)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._clock, self._sleep = clock, sleep
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._calls and self._calls[0] <= now - 60.0:
                    self._calls.popleft()
                if len(self._calls) < self.per_minute:
                    self._calls.append(now)
                    return waited
                wait = self._calls[0] + 60.0 - now
            self._sleep(wait)
            waited += wait


# KEYS[1] the call log (sorted set of call times); ARGV now, window, limit, member.
# Returns 0 when the call is allowed (and logged), else the seconds to wait.
_REDIS_WINDOW = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""


class RedisRateLimiter:
    """At most ``per_minute`` calls in any rolling 60 s across every process sharing ``redis``.
    ``clock`` is wall time (processes share it). If Redis fails, the call waits on ``fallback``
    (a per-process limiter) instead, says so in the log, and tries Redis again after
    ``retry_after`` seconds (so an outage costs one failed round trip, not one per call)."""

    def __init__(self, redis: Redis, per_minute: int, *, key: str = "scrm:tagsync:mark_tag",
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 fallback: RateLimiter | None = None, retry_after: float = 30.0):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.redis, self.per_minute, self.key = redis, per_minute, key
        self._clock, self._sleep = clock, sleep
        self._script = redis.register_script(_REDIS_WINDOW)
        self._fallback = fallback or LocalRateLimiter(per_minute, clock=clock, sleep=sleep)
        self.retry_after = retry_after
        self._down_until = float("-inf")

    def acquire(self) -> float:
        waited = 0.0
        while True:
            if self._clock() < self._down_until:
                return waited + self._fallback.acquire()
            try:
                answer = self._script(keys=[self.key],
                                      args=[repr(self._clock()), 60, self.per_minute, uuid.uuid4().hex])
            except Exception as exc:  # noqa: BLE001 - Redis down: keep to the per-process budget
                log.warning("tag_sync_limiter_unavailable", error=type(exc).__name__, retry_after=self.retry_after)
                self._down_until = self._clock() + self.retry_after
                return waited + self._fallback.acquire()
            wait = float(answer.decode() if isinstance(answer, bytes) else answer)
            if wait <= 0:
                return waited
            self._sleep(wait)
            waited += wait


def mark_tag_limiter(settings: Settings, redis: Redis | None = None, *, processes: int = 1) -> RateLimiter:
    """The limiter the scheduler job uses: shared through Redis when there is one, else this
    process's share of ``layers.mark_tag_per_minute`` (the setting divided by ``processes``)."""
    per_minute = settings.layers.mark_tag_per_minute
    if redis is not None:
        return RedisRateLimiter(redis, per_minute)
    return LocalRateLimiter(max(1, per_minute // max(1, processes)))


# -- what a customer should carry ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreInfo:
    name: str
    city: str


def _tag_name(template: str, **values: str) -> str:
    """Fill ``{name}`` / ``{city}`` / ``{code}`` (plain replacement: an operator's other braces stay
    as written) and cut to WeCom's 30 characters."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template.strip()[:WECOM_TAG_NAME_MAX]


def store_tag_names(ruleset: RuleSet, stores: dict[str, StoreInfo]) -> dict[str, str]:
    """Every store and city key the rules name, with its tag name (for renames)."""
    out: dict[str, str] = {}
    ts = ruleset.tags
    for code, st in stores.items():
        if ts.store_tag:
            out[f"store:{code}"] = _tag_name(ts.store_tag, name=st.name or code, code=code)
        if ts.city_tag and st.city:
            out[f"city:{st.city}"] = _tag_name(ts.city_tag, city=st.city)
    return out


def rule_tag_names(ruleset: RuleSet, stores: dict[str, StoreInfo]) -> dict[str, str]:
    """Every rule tag key the rules can produce today, with its name."""
    ts = ruleset.tags
    out: dict[str, str] = {}
    if ts.layer_tag:
        for layer in ruleset.layers:
            out[f"layer:{layer.id}"] = _tag_name(ts.layer_tag, name=layer.name)
    for rule in ts.rules:
        out[f"tag:{rule.id}"] = _tag_name(rule.name)
    out.update(store_tag_names(ruleset, stores))
    return out


def desired_tags(ruleset: RuleSet, layer: str, home_store: str | None, tag_bits: int,
                 stores: dict[str, StoreInfo]) -> dict[str, str]:
    """The rule tags one customer should carry: key -> tag name."""
    ts = ruleset.tags
    out: dict[str, str] = {}
    known_layers = {lay.id: lay for lay in ruleset.layers}
    if ts.layer_tag and layer in known_layers:
        out[f"layer:{layer}"] = _tag_name(ts.layer_tag, name=known_layers[layer].name)
    store = stores.get(home_store) if home_store else None
    if store is not None and home_store:
        if ts.store_tag:
            out[f"store:{home_store}"] = _tag_name(ts.store_tag, name=store.name or home_store, code=home_store)
        if ts.city_tag and store.city:
            out[f"city:{store.city}"] = _tag_name(ts.city_tag, city=store.city)
    for i, rule in enumerate(ts.rules):
        if tag_bits >> i & 1:
            out[f"tag:{rule.id}"] = _tag_name(rule.name)
    return out


def load_stores(session: Session) -> dict[str, StoreInfo]:
    return {code: StoreInfo(name or "", city or "")
            for code, name, city in session.connection().execute(
                core_select(Store.__table__.c.code, Store.__table__.c.name, Store.__table__.c.city))}


# -- reports ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelationFailure:
    userid: str
    external_userid: str
    errcode: int
    error: str
    add: tuple[str, ...] = ()  # tag names
    remove: tuple[str, ...] = ()

    def describe(self) -> str:
        what = ", ".join([*(f"+{n}" for n in self.add), *(f"-{n}" for n in self.remove)])
        return (f"mark_tag {self.userid} -> {self.external_userid} ({what}) refused: "
                f"errcode {self.errcode}: {self.error}")


@dataclass
class SyncReport:
    customers: int = 0  # dirty customers taken
    relations: int = 0  # active follow relations looked at
    calls: int = 0  # mark_tag calls made (failed ones included)
    unchanged: int = 0  # relations skipped: nothing to add or remove
    added: int = 0  # tags put on relations
    removed: int = 0  # tags taken off relations
    gone: int = 0  # relations WeCom no longer has (84061): nothing to tag
    overrides: int = 0  # tags a person took off by hand, found this run (not put back)
    cleaned: int = 0  # customers whose tags_dirty was cleared
    left_dirty: int = 0  # customers left dirty (a failure, or recomputed meanwhile)
    tags_created: int = 0
    tags_renamed: int = 0
    waited: float = 0.0  # seconds spent waiting on the limiter
    stopped: str | None = None  # why the run stopped early (rate limit, outage)
    failures: list[RelationFailure] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        out = (f"{self.customers} customers, {self.relations} relations, {self.calls} mark_tag calls, "
               f"{self.unchanged} unchanged, +{self.added}/-{self.removed} tags, {self.cleaned} done, "
               f"{self.left_dirty} left dirty")
        if self.stopped:
            out += f"; stopped: {self.stopped}"
        return out


@dataclass
class ReconcileReport:
    renamed: list[str] = field(default_factory=list)  # keys whose new WeCom name was accepted
    forgotten: list[str] = field(default_factory=list)  # keys whose tag was deleted in WeCom
    group_deleted: bool = False
    customers_dirtied: int = 0


# -- small helpers ------------------------------------------------------------------------------
def _session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def _chunks(items: Sequence[str], n: int = IN_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield list(items[i:i + n])


def _rule_tags(session: Session) -> dict[str, RuleTag]:
    return {r.key: r for r in session.exec(select(RuleTag))}


def _forget(session: Session, keys: Iterable[str], *, now: datetime, reason: str) -> int:
    """Forget rule tags WeCom deleted: their rows, the marks scrm made with them; the customers who
    carried them are marked dirty (the next sync applies the recreated tag). Returns customers."""
    rows = [r for r in _rule_tags(session).values() if r.key in set(keys)]
    tag_ids = [r.tag_id for r in rows if r.key != GROUP_KEY]
    dirtied = 0
    cl, mk = CustomerLayer.__table__.c, RuleTagMark.__table__.c
    conn = session.connection()
    for chunk in _chunks(tag_ids):
        carriers = core_select(mk.external_userid).where(mk.tag_id.in_(chunk)).distinct()
        dirtied += conn.execute(update(CustomerLayer.__table__).where(cl.external_userid.in_(carriers))
                                .values(tags_dirty=True)).rowcount or 0
        conn.execute(delete(RuleTagMark.__table__).where(mk.tag_id.in_(chunk)))
    for r in rows:
        session.delete(r)
        log.info("rule_tag_forgotten", key=r.key, tag_id=r.tag_id, name=r.name, reason=reason)
    return dirtied


def _group_json(groups: list[dict[str, Any]], group_id: str) -> dict[str, Any] | None:
    return next((g for g in groups if g.get("group_id") == group_id and not g.get("deleted")), None)


# -- the tags in WeCom --------------------------------------------------------------------------
def rename_rule_tags(engine: Engine, client: CorpTags, names: dict[str, str], *, group_name: str,
                     now: datetime) -> int:
    """Rename in WeCom every rule tag (and the group) whose rule name changed since scrm last named
    it. A name a person gave it in WeCom is left alone until then. Returns tags renamed."""
    renamed = 0
    with _session(engine) as s:
        rows = _rule_tags(s)
    for key, row in rows.items():
        target = group_name if key == GROUP_KEY else names.get(key)
        if target is None or row.rule_name == target:
            continue
        if row.name != target:
            try:
                client.edit_corp_tag(row.tag_id, name=target)
            except WeComAPIError as exc:
                if exc.errcode == INVALID_TAG:
                    with _session(engine) as s:
                        _forget(s, [key] if key != GROUP_KEY else list(rows), now=now, reason="rename: 40068")
                        s.commit()
                    continue
                log.warning("rule_tag_rename_failed", key=key, tag_id=row.tag_id, name=target,
                            errcode=exc.errcode, errmsg=exc.errmsg)
                continue
            renamed += 1
            log.info("rule_tag_renamed", key=key, tag_id=row.tag_id, old=row.name, new=target)
        with _session(engine) as s:
            fresh = s.get(RuleTag, key)
            if fresh is not None and fresh.tag_id == row.tag_id:
                fresh.name = fresh.rule_name = target
                fresh.updated_at = now
                s.add(fresh)
                tag_library.record_tag_name(s, row.tag_id, target)
                s.commit()
    return renamed


def _unique_names(wanted: dict[str, str], taken: set[str]) -> dict[str, str]:
    """Tag names are unique in a group: a name already used (by a hand-made tag in scrm's group or
    another rule tag, e.g. two long store names cut to the same 30 characters) gets a suffix."""
    out: dict[str, str] = {}
    used = set(taken)
    for key, name in sorted(wanted.items()):
        candidate, n = name, 2
        while candidate in used:
            suffix = f"·{n}"
            candidate = name[:WECOM_TAG_NAME_MAX - len(suffix)] + suffix
            n += 1
        used.add(candidate)
        out[key] = candidate
    return out


def ensure_rule_tags(engine: Engine, client: CorpTags, wanted: dict[str, str], *, group_name: str,
                     now: datetime) -> tuple[dict[str, str], int]:
    """Every key in ``wanted`` as a tag in scrm's group: mapped ones as they are, missing ones found
    in scrm's group by name (a crash after add_corp_tag, or made there by hand) or created, in
    batches. Returns (key -> tag id, tags created)."""
    created = 0
    for attempt in range(3):
        with _session(engine) as s:
            rows = _rule_tags(s)
        mapping = {k: rows[k].tag_id for k in wanted if k in rows}
        missing = {k: n for k, n in wanted.items() if k not in rows}
        if not missing:
            return mapping, created
        group = rows.get(GROUP_KEY)
        if group is not None:
            gjson = _group_json(client.get_corp_tags(group_ids=[group.tag_id]), group.tag_id)
            if gjson is None:  # scrm's group was deleted in WeCom and no event told us yet
                with _session(engine) as s:
                    _forget(s, list(rows), now=now, reason="group missing in WeCom")
                    s.commit()
                continue
        else:
            gjson = next((g for g in client.get_corp_tags()
                          if g.get("group_name") == group_name and not g.get("deleted")), None)
        taken_ids = {r.tag_id for r in rows.values()}
        in_group = {t["name"]: t["id"] for t in (gjson or {}).get("tag", [])}
        adopted: dict[str, str] = {}
        for key, name in missing.items():
            tid = in_group.get(name)
            if tid and tid not in taken_ids and tid not in adopted.values():
                adopted[key] = tid
        to_create = _unique_names({k: n for k, n in missing.items() if k not in adopted}, set(in_group))
        made: dict[str, dict[str, Any]] = {}
        gid = gjson["group_id"] if gjson else None
        try:
            for chunk in _chunks(sorted(to_create), ADD_BATCH):
                answer = client.add_corp_tag(group_id=gid, group_name=None if gid else group_name,
                                             tags=[{"name": to_create[k]} for k in chunk])
                gid = answer.get("group_id") or gid
                by_name = {t["name"]: t for t in answer.get("tag", [])}
                for k in chunk:
                    if to_create[k] in by_name:
                        made[k] = by_name[to_create[k]]
                with _session(engine) as s:
                    tag_library.record_tag_group(s, answer)
                    s.commit()
        except WeComAPIError as exc:
            if exc.errcode not in (INVALID_TAG, TAG_NAME_EXISTS) or attempt == 2:
                raise TagSyncError(f"could not create rule tags in WeCom group {group_name!r}: {exc}") from exc
            log.info("rule_tags_create_retry", errcode=exc.errcode, group_id=gid)
            if exc.errcode == INVALID_TAG:  # scrm's group was deleted meanwhile: make it again by name
                with _session(engine) as s:
                    _forget(s, list(_rule_tags(s)), now=now, reason="add_corp_tag: 40068")
                    s.commit()
                continue
        if gid is None:
            raise TagSyncError(f"WeCom did not say which group holds the rule tags ({group_name!r})")
        with _session(engine) as s:
            if s.get(RuleTag, GROUP_KEY) is None:
                s.add(RuleTag(key=GROUP_KEY, tag_id=gid, name=(gjson or {}).get("group_name") or group_name,
                              rule_name=group_name, created_at=now, updated_at=now))
                if gjson:
                    tag_library.record_tag_group(s, {k: v for k, v in gjson.items() if k != "tag"})
            for key, tid in adopted.items():
                s.add(RuleTag(key=key, tag_id=tid, name=missing[key], rule_name=missing[key],
                              created_at=now, updated_at=now))
                log.info("rule_tag_adopted", key=key, tag_id=tid, name=missing[key], group_id=gid)
            for key, t in made.items():
                s.add(RuleTag(key=key, tag_id=t["id"], name=t["name"], rule_name=missing[key],
                              created_at=now, updated_at=now))
                log.info("rule_tag_created", key=key, tag_id=t["id"], name=t["name"], group_id=gid)
            s.commit()
        created += len(made)
    with _session(engine) as s:
        rows = _rule_tags(s)
    lost = sorted(k for k in wanted if k not in rows)
    if lost:
        raise TagSyncError(f"rule tags still missing in WeCom after a retry: {', '.join(lost)}")
    return {k: rows[k].tag_id for k in wanted}, created


# -- reconciling what people did in WeCom -------------------------------------------------------
def reconcile_rule_tags(engine: Engine, client: CorpTags, ruleset: RuleSet | None = None, *, now: datetime,
                        refresh: bool = False) -> ReconcileReport:
    """After the tag library mirror was re-read (``apply_tag_library`` on a tag event; or here,
    with ``refresh``): accept names people gave rule tags in WeCom, forget rule tags (or the whole
    group) deleted there and mark their customers dirty. A deletion the mirror shows is confirmed
    with WeCom by id first (a stale library read must not make scrm forget a live tag).
    ``ruleset`` is not needed to reconcile; it is accepted so the hooks share one signature."""
    del ruleset
    report = ReconcileReport()
    if refresh:
        library = client.get_corp_tags()
        with _session(engine) as s:
            tag_library.apply_tag_library(s, library)
            s.commit()
    with _session(engine) as s:
        rows = _rule_tags(s)
        if not rows:
            return report
        tags = {t.tag_id: t for t in s.exec(select(Tag))}
        groups = {g.group_id: g for g in s.exec(select(TagGroup))}
    group = rows.get(GROUP_KEY)
    if group is not None and (g := groups.get(group.tag_id)) is not None and g.deleted:
        if refresh or _group_json(client.get_corp_tags(group_ids=[group.tag_id]), group.tag_id) is None:
            with _session(engine) as s:
                report.customers_dirtied = _forget(s, list(rows), now=now, reason="group deleted in WeCom")
                s.commit()
            report.group_deleted, report.forgotten = True, sorted(k for k in rows if k != GROUP_KEY)
            log.info("rule_tag_group_deleted_in_wecom", group_id=group.tag_id, tags=len(report.forgotten),
                     customers_dirtied=report.customers_dirtied, outcome="recreated on the next sync")
            return report
    suspects = [r for r in rows.values() if r.key != GROUP_KEY and (t := tags.get(r.tag_id)) is not None and t.deleted]
    if suspects and not refresh:
        alive = {t["id"] for g in client.get_corp_tags(tag_ids=[r.tag_id for r in suspects])
                 for t in g.get("tag", []) if not t.get("deleted")}
        suspects = [r for r in suspects if r.tag_id not in alive]
    with _session(engine) as s:
        if suspects:
            report.forgotten = sorted(r.key for r in suspects)
            report.customers_dirtied = _forget(s, report.forgotten, now=now, reason="deleted in WeCom")
        gone = set(report.forgotten)
        for key, row in rows.items():
            if key in gone:
                continue
            mirror = groups.get(row.tag_id) if key == GROUP_KEY else tags.get(row.tag_id)
            mirror_name = getattr(mirror, "name", None)
            if mirror is None or mirror.deleted or not mirror_name or mirror_name == row.name:
                continue
            fresh = s.get(RuleTag, key)
            if fresh is None:
                continue
            log.info("rule_tag_renamed_in_wecom", key=key, tag_id=row.tag_id, old=row.name, new=mirror_name,
                     rule_name=row.rule_name,
                     outcome="accepted: scrm renames it only if the rule's own name changes")
            fresh.name, fresh.updated_at = mirror_name, now
            s.add(fresh)
            report.renamed.append(key)
        s.commit()
    if report.forgotten:
        log.info("rule_tags_deleted_in_wecom", keys=report.forgotten, customers_dirtied=report.customers_dirtied,
                 outcome="recreated and re-applied on the next sync")
    return report


# -- the sync -----------------------------------------------------------------------------------
FLUSH_EVERY = 500  # customers between database writes (marks, tag_ids, dirty flags)


@dataclass
class _Mark:
    tag_id: str
    removed_by_hand_at: datetime | None = None


@dataclass
class _Relation:
    userid: str
    external_userid: str
    tag_ids: list[str]
    marks: dict[str, _Mark] = field(default_factory=dict)  # key -> what scrm put there


@dataclass
class _Customer:
    external_userid: str
    computed_at: datetime
    desired: dict[str, str]  # key -> name
    relations: list[_Relation] = field(default_factory=list)


class _TagGone(Exception):
    """mark_tag answered 40068: a rule tag was deleted in WeCom meanwhile."""


class _StopRun(Exception):
    def __init__(self, failure: RelationFailure, why: str):
        super().__init__(why)
        self.failure, self.why = failure, why


def _dirty_customers(session: Session, limit: int) -> list[tuple[str, str, str | None, int, datetime]]:
    cl, f = CustomerLayer.__table__.c, RuleTagFailure.__table__.c
    q = (core_select(cl.external_userid, cl.layer, cl.home_store, cl.tag_bits, cl.computed_at)
         .select_from(CustomerLayer.__table__.outerjoin(RuleTagFailure.__table__,
                                                        f.external_userid == cl.external_userid))
         .where(cl.tags_dirty.is_(True))
         .order_by(case((f.failed_at.is_(None), 0), else_=1), f.failed_at, cl.computed_at, cl.external_userid)
         .limit(limit))
    return [tuple(r) for r in session.connection().execute(q)]


def _load_relations(engine: Engine, customers: dict[str, _Customer]) -> None:
    """Every active follow relation of ``customers`` and the marks scrm made on them (set-based)."""
    fr, mk = FollowRelation.__table__.c, RuleTagMark.__table__.c
    by_pair: dict[tuple[str, str], _Relation] = {}
    for c in customers.values():
        c.relations = []
    with engine.connect() as conn:
        for chunk in _chunks(list(customers)):
            for userid, eid, tag_ids in conn.execute(
                    core_select(fr.userid, fr.external_userid, fr.tag_ids)
                    .where(fr.external_userid.in_(chunk), fr.status == FollowStatus.active).order_by(fr.id)):
                rel = _Relation(userid, eid, list(tag_ids or []))
                customers[eid].relations.append(rel)
                by_pair[(userid, eid)] = rel
            for userid, eid, key, tag_id, removed in conn.execute(
                    core_select(mk.userid, mk.external_userid, mk.key, mk.tag_id, mk.removed_by_hand_at)
                    .where(mk.external_userid.in_(chunk))):
                if (owner := by_pair.get((userid, eid))) is not None:
                    owner.marks[key] = _Mark(tag_id, removed)


class _Writes:
    """What a run learned, written in one transaction per FLUSH_EVERY customers (set-based), so an
    unchanged customer costs no call and a share of a few statements. A crash before a flush loses
    only the record of calls WeCom already applied: the next run sees the tags missing from
    follow_relations and adds them again (mark_tag adding a tag a relation has changes nothing)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.tag_ids: dict[tuple[str, str], list[str]] = {}
        self.marks_set: dict[tuple[str, str, str], _Mark] = {}
        self.marks_del: set[tuple[str, str, str]] = set()
        self.done: list[tuple[str, datetime, frozenset[str]]] = []  # customers whose relations all went well
        self.failed: dict[str, RelationFailure] = {}  # external_userid -> its (first) failure

    def set_mark(self, rel: _Relation, key: str, mark: _Mark) -> None:
        rel.marks[key] = mark
        self.marks_del.discard((rel.userid, rel.external_userid, key))
        self.marks_set[(rel.userid, rel.external_userid, key)] = mark

    def drop_mark(self, rel: _Relation, key: str) -> None:
        rel.marks.pop(key, None)
        self.marks_set.pop((rel.userid, rel.external_userid, key), None)
        self.marks_del.add((rel.userid, rel.external_userid, key))

    def flush(self, engine: Engine, report: SyncReport, now: datetime) -> None:
        fr, mk, cl = FollowRelation.__table__.c, RuleTagMark.__table__.c, CustomerLayer.__table__.c
        with engine.begin() as conn:
            if self.tag_ids:
                conn.execute(update(FollowRelation.__table__)
                             .where(fr.userid == bindparam("u"), fr.external_userid == bindparam("e"))
                             .values(tag_ids=bindparam("t"), updated_at=now),
                             [{"u": u, "e": e, "t": t} for (u, e), t in self.tag_ids.items()])
            gone = self.marks_del | set(self.marks_set)
            if gone:
                conn.execute(delete(RuleTagMark.__table__).where(
                    mk.userid == bindparam("u"), mk.external_userid == bindparam("e"), mk.key == bindparam("k")),
                    [{"u": u, "e": e, "k": k} for u, e, k in gone])
            if self.marks_set:
                conn.execute(insert(RuleTagMark.__table__), [
                    {"userid": u, "external_userid": e, "key": k, "tag_id": m.tag_id, "marked_at": now,
                     "removed_by_hand_at": m.removed_by_hand_at} for (u, e, k), m in self.marks_set.items()])
            live = {t for (t,) in conn.execute(core_select(RuleTag.__table__.c.tag_id))}
            # Only if every tag applied still exists (a reconcile may have forgotten one meanwhile),
            # and only if the row was not recomputed since it was read.
            clear = [{"e": e, "c": c} for e, c, applied in self.done if applied <= live]
            if clear:
                conn.execute(update(CustomerLayer.__table__).where(
                    cl.external_userid == bindparam("e"), cl.computed_at == bindparam("c"),
                    cl.tags_dirty.is_(True)).values(tags_dirty=False), clear)
            ids = [e for e, _c, _a in self.done]
            still: set[str] = set()
            for chunk in _chunks(ids):
                still |= {e for (e,) in conn.execute(core_select(cl.external_userid).where(
                    cl.external_userid.in_(chunk), cl.tags_dirty.is_(True)))}
            cleared = [e for e in ids if e not in still]
            for chunk in _chunks(cleared):
                conn.execute(delete(RuleTagFailure.__table__).where(
                    RuleTagFailure.__table__.c.external_userid.in_(chunk)))
        report.cleaned += len(cleared)
        report.left_dirty += len(still)
        if self.failed:
            with _session(engine) as s:
                for failure in self.failed.values():
                    row = s.get(RuleTagFailure, failure.external_userid) or RuleTagFailure(
                        external_userid=failure.external_userid, userid=failure.userid, errcode=failure.errcode,
                        error="", attempts=0, failed_at=now)
                    row.userid, row.errcode, row.error = failure.userid, failure.errcode, failure.describe()[:500]
                    row.attempts, row.failed_at = row.attempts + 1, now
                    s.add(row)
                s.commit()
            report.left_dirty += len(self.failed)
        self._reset()


def sync_dirty_tags(engine: Engine, client: CorpTags, ruleset: RuleSet, *, now: datetime, limit: int,
                    rate: RateLimiter, group_name: str | None = None) -> SyncReport:
    """Bring the rule tags of up to ``limit`` dirty customers' active follow relations in line with
    their layer, home store and condition tags (see the module docstring for every rule)."""
    if group_name is None:
        from scrm.config import get_settings

        group_name = get_settings().layers.tag_group_name
    started = time.perf_counter()
    report = SyncReport()
    with _session(engine) as s:
        rows = _dirty_customers(s, limit)
        if not rows:
            return report
        stores = load_stores(s)
    customers = {eid: _Customer(eid, computed_at, desired_tags(ruleset, layer, home, bits or 0, stores))
                 for eid, layer, home, bits, computed_at in rows}
    _load_relations(engine, customers)
    report.customers = len(customers)
    report.tags_renamed = rename_rule_tags(engine, client, rule_tag_names(ruleset, stores),
                                           group_name=group_name, now=now)
    wanted = {k: n for c in customers.values() for k, n in c.desired.items()}
    state = _RunState(engine, client, group_name, now, wanted)
    report.tags_created += state.refresh_tags()
    writes = _Writes()
    pending = 0
    try:
        for cust in customers.values():
            try:
                _sync_customer(state, cust, writes, rate, report, retry_gone=True)
            except _TagGone:
                log.info("tag_sync_tag_gone", external_userid=cust.external_userid,
                         outcome="re-reading the tag library, making the tag again, retrying the customer once")
                writes.flush(engine, report, now)  # the reconcile forgets marks in the database
                state.tag_deleted_in_wecom()
                _load_relations(engine, customers)
                _sync_customer(state, cust, writes, rate, report, retry_gone=False)
            pending += 1
            if pending >= FLUSH_EVERY:
                writes.flush(engine, report, now)
                pending = 0
                log.info("tag_sync_progress", customers=report.cleaned + report.left_dirty, of=report.customers,
                         calls=report.calls, unchanged=report.unchanged, waited=round(report.waited, 3))
    except _StopRun as stop:
        report.failures.append(stop.failure)
        writes.failed.setdefault(stop.failure.external_userid, stop.failure)
        report.stopped = stop.why
        log.warning("tag_sync_stopped", reason=stop.why, errcode=stop.failure.errcode,
                    userid=stop.failure.userid, external_userid=stop.failure.external_userid)
    finally:
        writes.flush(engine, report, now)
    report.tags_created += state.created_later
    report.seconds = time.perf_counter() - started
    log.info("tag_sync_done", customers=report.customers, relations=report.relations, calls=report.calls,
             unchanged=report.unchanged, added=report.added, removed=report.removed, gone=report.gone,
             overrides=report.overrides, cleaned=report.cleaned, left_dirty=report.left_dirty,
             failures=len(report.failures), tags_created=report.tags_created, tags_renamed=report.tags_renamed,
             waited=round(report.waited, 3), stopped=report.stopped, seconds=round(report.seconds, 3))
    return report


class _RunState:
    """The rule tags as this run knows them; refreshed after WeCom says a tag is gone (40068)."""

    def __init__(self, engine: Engine, client: CorpTags, group_name: str, now: datetime,
                 wanted: dict[str, str]):
        self.engine, self.client, self.group_name, self.now = engine, client, group_name, now
        self.wanted = wanted
        self.mapping: dict[str, str] = {}
        self.rule_ids: set[str] = set()
        self.names: dict[str, str] = {}  # tag id -> name (for messages)
        self.created_later = 0

    def refresh_tags(self) -> int:
        self.mapping, created = ensure_rule_tags(self.engine, self.client, self.wanted,
                                                 group_name=self.group_name, now=self.now)
        with _session(self.engine) as s:
            rows = _rule_tags(s)
        self.rule_ids = {r.tag_id for k, r in rows.items() if k != GROUP_KEY}
        self.names = {r.tag_id: r.name for r in rows.values()}
        return created

    def tag_deleted_in_wecom(self) -> None:
        reconcile_rule_tags(self.engine, self.client, now=self.now, refresh=True)
        self.created_later += self.refresh_tags()


def _plan(state: _RunState, cust: _Customer, rel: _Relation, writes: _Writes,
          report: SyncReport) -> tuple[list[str], list[str], dict[str, str]]:
    """(add, remove, key of each tag id added) for one relation; notes hand removals and ends
    overrides of tags the customer no longer qualifies for."""
    present = set(rel.tag_ids)
    desired_ids = {state.mapping[k]: k for k in cust.desired}
    skip: set[str] = set()
    for key, m in list(rel.marks.items()):
        if key not in cust.desired:
            if m.removed_by_hand_at is not None or m.tag_id not in present:
                writes.drop_mark(rel, key)  # no longer wanted: the override (or the stale mark) ends
            continue
        if m.tag_id != state.mapping[key]:
            writes.drop_mark(rel, key)  # made with a tag WeCom no longer has
            continue
        if m.tag_id in present:
            if m.removed_by_hand_at is not None:  # a person put it back: the override ends
                writes.set_mark(rel, key, _Mark(m.tag_id))
            continue
        if m.removed_by_hand_at is None:
            writes.set_mark(rel, key, _Mark(m.tag_id, state.now))
            report.overrides += 1
            log.info("rule_tag_removed_by_hand", userid=rel.userid, external_userid=rel.external_userid,
                     key=key, tag_id=m.tag_id, outcome="not put back while the customer qualifies for it")
        skip.add(m.tag_id)
    add = [tid for tid in desired_ids if tid not in present and tid not in skip]
    remove = [tid for tid in rel.tag_ids if tid in state.rule_ids and tid not in desired_ids]
    return add, remove, {tid: desired_ids[tid] for tid in add}


def _sync_customer(state: _RunState, cust: _Customer, writes: _Writes, rate: RateLimiter, report: SyncReport,
                   *, retry_gone: bool) -> None:
    """Mark every active relation of one customer; what happened goes to ``writes``. With
    ``retry_gone``, a 40068 raises ``_TagGone`` (the caller reconciles and calls again without it:
    relations already done are then unchanged and cost nothing)."""
    applied: set[str] = set()
    failed = False
    for rel in cust.relations:
        if retry_gone:
            report.relations += 1
        add, remove, keys = _plan(state, cust, rel, writes, report)
        if not add and not remove:
            report.unchanged += 1
            applied.update(t for t in rel.tag_ids if t in state.rule_ids)
            continue
        report.waited += rate.acquire()
        report.calls += 1
        try:
            state.client.mark_tag(rel.userid, rel.external_userid, add=add, remove=remove)
        except WeComAPIError as exc:
            if exc.errcode == INVALID_TAG and retry_gone:
                raise _TagGone() from exc
            fail = RelationFailure(rel.userid, rel.external_userid, exc.errcode, exc.errmsg or str(exc),
                                   tuple(state.names.get(t, t) for t in add),
                                   tuple(state.names.get(t, t) for t in remove))
            if exc.errcode == NOT_CONTACT:
                report.gone += 1
                log.info("tag_sync_relation_gone", userid=rel.userid, external_userid=rel.external_userid,
                         errcode=exc.errcode, outcome="nothing to tag")
                continue
            if isinstance(exc, RateLimited | SystemBusy | TransportError):
                why = {RateLimited: "WeCom rate limit (45009/45033) after backoff",
                       SystemBusy: "WeCom busy (-1) after retries"}.get(type(exc), "WeCom unreachable")
                raise _StopRun(fail, why) from exc
            failed = True
            report.failures.append(fail)
            writes.failed.setdefault(cust.external_userid, fail)
            log.warning("tag_sync_mark_refused", userid=rel.userid, external_userid=rel.external_userid,
                        errcode=exc.errcode, errmsg=exc.errmsg, add=list(fail.add), remove=list(fail.remove))
            continue
        report.added += len(add)
        report.removed += len(remove)
        gone = set(remove)
        rel.tag_ids = [t for t in rel.tag_ids if t not in gone] + add
        writes.tag_ids[(rel.userid, rel.external_userid)] = list(rel.tag_ids)
        for tid in add:
            writes.set_mark(rel, keys[tid], _Mark(tid))
        for key, m in list(rel.marks.items()):
            if m.tag_id in gone:
                writes.drop_mark(rel, key)
        applied.update(t for t in rel.tag_ids if t in state.rule_ids)
    if not failed:
        writes.done.append((cust.external_userid, cust.computed_at, frozenset(applied)))
