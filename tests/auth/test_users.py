"""Users, grants and passwords (scrm.auth.service) and the ``scrm users`` commands, on SQLite and
PostgreSQL.

Mutations tried (each made the named tests fail, then was undone):
- verify_password skipping the disabled check (``not user.disabled`` dropped): test_passwords_are_argon2_and_verified.
- verify_password answering an unknown userid at once, without hashing (``return False`` before the
  dummy verify): test_an_unknown_userid_takes_as_long_as_a_wrong_password.
- _grant_rows not checking stores exist (``missing = []``): test_the_commands_refuse_bad_input_and_store_nothing.
- principal_for keeping disabled users (``or user.disabled`` dropped): test_principal_for.
- grant_demo_roles without the corp check: test_demo_roles_are_for_the_sandbox_corp_only.
"""

from __future__ import annotations

import statistics
import time

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from scrm.auth import service
from scrm.auth.cli import users_app
from scrm.auth.models import RoleGrant, User
from scrm.auth.roles import Principal, Role
from scrm.config import SANDBOX_CORP_ID

runner = CliRunner()
GOOD = "a long enough password"


def table(engine, model):
    with Session(engine) as s:
        return s.exec(select(model)).all()


@pytest.fixture
def real_hashes(monkeypatch):
    """pwdlib's recommended argon2id parameters (conftest makes hashing cheap for the other tests)."""
    from pwdlib import PasswordHash

    monkeypatch.setattr(service, "_hasher", PasswordHash.recommended())
    monkeypatch.setattr(service, "_dummy", None)


def test_the_stored_hash_is_argon2id_with_pwdlibs_recommended_parameters(sqlite_engine, real_hashes):
    from scrm.auth.service import add_user

    add_user(sqlite_engine, "admin", password=GOOD)
    stored = table(sqlite_engine, User)[0].password_hash
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and GOOD not in stored
    assert service.verify_password(sqlite_engine, "admin", GOOD)


def test_passwords_are_argon2_and_verified(stores):
    service.add_user(stores, "admin", password=GOOD, role=Role.manager)
    service.add_user(stores, "wecomonly", role=Role.manager)
    stored = {u.userid: u.password_hash for u in table(stores, User)}
    assert stored["admin"].startswith("$argon2id$") and GOOD not in stored["admin"]
    assert stored["wecomonly"] is None
    assert service.verify_password(stores, "admin", GOOD)
    assert not service.verify_password(stores, "admin", GOOD + " ")
    assert not service.verify_password(stores, "admin", "")
    assert not service.verify_password(stores, "nobody", GOOD)
    assert not service.verify_password(stores, "wecomonly", "")
    assert not service.verify_password(stores, "admin", GOOD * 100)  # longer than any password we take
    service.set_disabled(stores, "admin", True)
    assert not service.verify_password(stores, "admin", GOOD)
    service.set_disabled(stores, "admin", False)
    service.set_password(stores, "admin", "another good password")
    assert not service.verify_password(stores, "admin", GOOD)
    assert service.verify_password(stores, "admin", "another good password")
    with pytest.raises(service.WeakPassword, match="at least 10 characters"):
        service.set_password(stores, "admin", "short")
    assert service.verify_password(stores, "admin", "another good password")  # the refused change kept it


def test_an_old_hash_is_upgraded_when_its_owner_signs_in(stores, monkeypatch):
    """A hash made with weaker parameters than the current ones is replaced on a right password."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    weak = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    monkeypatch.setattr(service, "_hasher", weak)
    service.add_user(stores, "admin", password=GOOD, role=Role.manager)
    old = table(stores, User)[0].password_hash
    monkeypatch.setattr(service, "_hasher", PasswordHash((Argon2Hasher(time_cost=2, memory_cost=2048, parallelism=1),)))
    assert service.verify_password(stores, "admin", GOOD)
    new = table(stores, User)[0].password_hash
    assert new != old and "m=2048,t=2" in new and service.verify_password(stores, "admin", GOOD)


def test_an_unknown_userid_takes_as_long_as_a_wrong_password(sqlite_engine, monkeypatch):
    """Timing does not tell which userids exist: the median of 5 wrong-password checks of a real
    user and of an unknown userid are within a factor of 2 (each is one argon2 verification; with
    these test parameters ~20 ms, against well under 1 ms for the lookup alone)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    monkeypatch.setattr(service, "_hasher", PasswordHash((Argon2Hasher(time_cost=2, memory_cost=16384,
                                                                       parallelism=1),)))
    stores = sqlite_engine
    service.add_user(stores, "admin", password=GOOD)

    def median(userid: str) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            assert not service.verify_password(stores, userid, "wrong password")
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    median("admin")  # warm up (the dummy hash is made once)
    known, unknown = median("admin"), median("nobody-here")
    assert 0.5 < unknown / known < 2, (known, unknown)


def test_principal_for(stores):
    service.add_user(stores, "clerk", role=Role.store_staff, stores=["BJ001", "SH001"])
    service.add_user(stores, "zhangsan")  # the synced member: named from the employees table
    assert service.principal_for(stores, "zhangsan") is None  # no role yet
    service.grant(stores, "zhangsan", Role.operator)
    p = service.principal_for(stores, "zhangsan")
    assert p == Principal("zhangsan", "张三", frozenset({Role.operator}), frozenset())
    assert p.visible_stores() is None and p.may_see_kpis
    clerk = service.principal_for(stores, "clerk")
    assert clerk.name == "clerk" and clerk.visible_stores() == frozenset({"BJ001", "SH001"})
    service.revoke(stores, "clerk", Role.store_staff, ["SH001"])
    assert service.principal_for(stores, "clerk").visible_stores() == frozenset({"BJ001"})
    service.grant(stores, "clerk", Role.sales_rep)
    service.revoke(stores, "clerk", Role.store_staff)
    rep = service.principal_for(stores, "clerk")
    assert rep.roles == {Role.sales_rep} and rep.visible_stores() == frozenset() and not rep.may_see_kpis
    service.set_disabled(stores, "clerk", True)
    assert service.principal_for(stores, "clerk") is None and service.user_status(stores, "clerk") == "disabled"
    assert service.principal_for(stores, "nobody") is None and service.user_status(stores, "nobody") == "unknown"


def test_grants_are_not_doubled(stores):
    first = service.grant(stores, "lisi", Role.store_staff, ["BJ001"])
    assert first.created_user and first.added == ((Role.store_staff, "BJ001"),) and not first.known_member
    again = service.grant(stores, "lisi", Role.store_staff, ["BJ001", "SH001"])
    assert not again.created_user and again.added == ((Role.store_staff, "SH001"),)
    assert len(table(stores, RoleGrant)) == 2


def test_demo_roles_are_for_the_sandbox_corp_only(stores):
    demo = {"admin": "admin", "stores": [{"code": "BJ001", "staff": ["zhangsan", "lisi"]},
                                         {"code": "SH001", "staff": ["zhoumin"]}]}
    with pytest.raises(service.NotSandbox, match="sandbox corp"):
        service.grant_demo_roles(stores, demo, corp_id="wwrealcorp123")
    assert table(stores, RoleGrant) == []
    new = service.grant_demo_roles(stores, demo, corp_id=SANDBOX_CORP_ID)
    assert new == [("admin", Role.manager, ""), ("zhangsan", Role.store_staff, "BJ001"),
                   ("zhoumin", Role.store_staff, "SH001")]
    assert service.grant_demo_roles(stores, demo, corp_id=SANDBOX_CORP_ID) == []  # a restart: nothing new
    assert service.principal_for(stores, "zhangsan").visible_stores() == frozenset({"BJ001"})
    assert service.principal_for(stores, "admin").sees_all_stores


# -- the CLI ----------------------------------------------------------------------------------------------
@pytest.fixture
def cli_db(stores, db_url, monkeypatch):
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines

    monkeypatch.setenv("SCRM_DATABASE__URL", db_url)
    reset_settings_cache()
    yield stores
    dispose_engines()
    reset_settings_cache()


def run(*args, input=None):
    return runner.invoke(users_app, list(args), input=input)


def test_the_commands_add_grant_revoke_and_list(cli_db):
    r = run("add", "admin", "--name", "管理员", "--ask-password", "--role", "manager", input=f"{GOOD}\n{GOOD}\n")
    assert r.exit_code == 0, r.output
    assert "added local user admin: manager" in r.output
    assert service.verify_password(cli_db, "admin", GOOD)

    r = run("add", "clerk", "--password", GOOD, "--role", "store_staff", "--store", "BJ001", "--store", "SH001")
    assert r.exit_code == 0 and "store_staff@BJ001, store_staff@SH001" in r.output, r.output
    r = run("add", "zhangsan")
    assert r.exit_code == 0 and "no role yet: `scrm users grant zhangsan ROLE`" in r.output

    r = run("grant", "zhangsan", "operator")
    assert r.exit_code == 0 and "granted zhangsan: operator" in r.output and "new user" not in r.output
    r = run("grant", "zhangsan", "OPERATOR")
    assert r.exit_code == 0 and "already had that: nothing changed" in r.output
    r = run("grant", "wangwu", "store_staff", "--store", "BJ001")
    assert r.exit_code == 0 and "new user wangwu" in r.output and "not a synced WeCom member" in r.output

    r = run("revoke", "clerk", "store_staff", "--store", "SH001")
    assert r.exit_code == 0 and "revoked 1 grant(s) of store_staff from clerk" in r.output
    r = run("revoke", "clerk", "manager")
    assert r.exit_code == 0 and "clerk had no such grant: nothing changed" in r.output

    r = run("disable", "wangwu")
    assert r.exit_code == 0 and "disabled wangwu" in r.output
    r = run("list")
    assert r.exit_code == 0, r.output
    lines = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("│ ")}
    assert "manager" in lines["admin"] and "password + WeCom" in lines["admin"] and "管理员" in lines["admin"]
    assert "store_staff@BJ001" in lines["clerk"] and "SH001" not in lines["clerk"]
    assert "operator" in lines["zhangsan"] and "张三" in lines["zhangsan"] and "never" in lines["zhangsan"]
    assert "disabled" in lines["wangwu"]


def test_the_commands_refuse_bad_input_and_store_nothing(cli_db):
    cases = [
        (("add", "x1", "--role", "boss"), "unknown role 'boss': use one of manager, operator, store_staff, sales_rep"),
        (("grant", "x1", "admin"), "unknown role 'admin': use one of manager, operator, store_staff, sales_rep"),
        (("add", "x1", "--role", "store_staff"), "store_staff needs the store: add --store CODE"),
        (("grant", "x1", "store_staff"), "store_staff needs the store: add --store CODE"),
        (("grant", "x1", "store_staff", "--store", "BJ001", "--store", "NOPE9"),
         "unknown store code NOPE9: `scrm stores list` shows the stores"),
        (("add", "x1", "--role", "manager", "--store", "BJ001"), "--store is only for store_staff"),
        (("add", "x1", "--store", "BJ001"), "--store goes with --role store_staff"),
        (("add", "x1", "--password", "short"), "the password is too short: at least 10 characters"),
        (("add", "x1", "--password", GOOD, "--ask-password"), "give either --password or --ask-password"),
        (("add", "bad userid"), "must be 1-64 letters, digits or _ - @ ."),
        (("revoke", "x1", "manager"), "no user 'x1'"),
        (("disable", "x1"), "no user 'x1'"),
    ]
    for args, says in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and says in r.output, (args, r.output)
    assert table(cli_db, User) == [] and table(cli_db, RoleGrant) == []

    short = run("add", "x1", "--ask-password", input="short\nshort\n")
    assert short.exit_code == 2 and "too short" in short.output
    mismatch = run("add", "x1", "--ask-password", input=f"{GOOD}\nother password\n{GOOD}\n{GOOD}\n")
    assert mismatch.exit_code == 0 and "Error: The two entered values do not match" in mismatch.output
    assert run("add", "x1").output.startswith("error: user x1 already exists")
    r = run("list")
    assert "x1" in r.output and "-" in r.output


def test_the_demo_corps_grants_come_from_its_seed():
    """The sandbox's real demo chain: its operator is the manager, each store's group owner its clerk."""
    from scrm.sandbox import Sandbox, seed_demo

    grants = service.demo_grants(seed_demo(Sandbox()))
    assert grants[0] == ("admin", Role.manager, None)
    assert ("zhangsan", Role.store_staff, "BJ001") in grants and len(grants) == 7
