"""The migrations match the models on both backends (the newcomer's `scrm run`: tests/test_run.py), and
settings WeCom would refuse are refused."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlmodel import SQLModel

from scrm.config import ConfigError, Settings, get_settings, reset_settings_cache
from scrm.sop.planner import Limits


def _modelled(obj, name, type_, reflected, compare_to) -> bool:
    """PostgreSQL-only trigram indexes (migration 0019) live outside the models."""
    return not (type_ == "index" and reflected and str(name).endswith("_trgm"))


def test_alembic_head_matches_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_object": _modelled}),
                                SQLModel.metadata)
    assert diff == []


def test_mobile_search_has_its_trigram_indexes_on_postgresql(engine):
    """Searching by part of a mobile (``LIKE '%8000%'``) is served by GIN trigram indexes there."""
    if engine.dialect.name != "postgresql":
        pytest.skip("trigram indexes are PostgreSQL's")
    with engine.connect() as conn:
        found = {row[0]: row[1] for row in conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE right(indexname, 5) = '_trgm'")}
    assert set(found) == {"ix_crm_messages_mobile_trgm", "ix_customer_mobiles_mobile_trgm"}
    assert all("gin" in d and "gin_trgm_ops" in d for d in found.values()), found


def test_a_mass_send_limit_wecom_would_refuse_is_a_clear_error(tmp_path, monkeypatch):
    """WeCom delivers one customer-group mass send a group a day: sop.max_mass_sends_per_group_per_day
    above 1 (or below 0) is refused, naming the setting and the limit, from code, the environment
    and config.yaml alike. Tried: the old bound (le=3): 2 and 3 were accepted."""
    says = ("sop.max_mass_sends_per_group_per_day is {}: WeCom delivers at most 1 customer-group mass send "
            "(add_msg_template, chat_type group) to a group a day, so it must be 0 (no mass sends) or 1")
    for bad in (2, 3, -1):
        with pytest.raises(ValidationError) as exc:
            Settings(sop={"max_mass_sends_per_group_per_day": bad})
        assert says.format(bad) in str(exc.value)
        with pytest.raises(ValueError, match="max_mass_sends_per_group_per_day must be 0..1"):
            Limits(max_mass_sends_per_group_per_day=bad)
    assert [Settings(sop={"max_mass_sends_per_group_per_day": n}).sop.max_mass_sends_per_group_per_day
            for n in (0, 1)] == [0, 1]
    assert Settings().sop.max_mass_sends_per_group_per_day == 1

    monkeypatch.chdir(tmp_path)  # no config.yaml here
    try:
        monkeypatch.setenv("SCRM_SOP__MAX_MASS_SENDS_PER_GROUP_PER_DAY", "3")
        reset_settings_cache()
        with pytest.raises(ConfigError) as exc:
            get_settings()
        assert str(exc.value) == "invalid settings: " + says.format(3) + (
            "; the day's other posts go out as owner_task or group_robot")
        monkeypatch.delenv("SCRM_SOP__MAX_MASS_SENDS_PER_GROUP_PER_DAY")
        (tmp_path / "config.yaml").write_text("sop:\n  max_mass_sends_per_group_per_day: 2\n", encoding="utf-8")
        reset_settings_cache()
        with pytest.raises(ConfigError, match=r"sop\.max_mass_sends_per_group_per_day is 2: WeCom delivers"):
            get_settings()
        (tmp_path / "config.yaml").write_text("sop:\n  max_mass_sends_per_group_per_day: many\n", encoding="utf-8")
        reset_settings_cache()
        with pytest.raises(ConfigError, match=r"^invalid settings: sop\.max_mass_sends_per_group_per_day: Input "
                                              r"should be a valid integer"):
            get_settings()
    finally:
        reset_settings_cache()
