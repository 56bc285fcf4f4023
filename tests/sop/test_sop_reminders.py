"""The owner's reminder names each due post by its template's name, as operators wrote it for
people (下午茶限时秒杀), never by the template's id (a file slug), even when the template can no
longer be loaded. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import Session

from scrm.config import SopSettings
from scrm.groups.models import CustomerGroup
from scrm.sop import jobs
from scrm.sop.models import SopPost
from scrm.sop.reminders import pending_reminders, send_reminders

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
NOW = dt.datetime.combine(DAY, dt.time(11, 55), tzinfo=TZ).astimezone(dt.UTC)
FLASH = """\
    id: afternoon-flash-sale
    name: 下午茶限时秒杀
    steps:
      - {at: "11:54", channel: owner_task, text: 第二杯半价}
"""


class Client:
    """Records the app messages a reminder run sends."""

    def __init__(self):
        self.messages: list[dict] = []

    def send_app_message(self, message: dict) -> dict:
        self.messages.append(message)
        return {"errcode": 0, "invaliduser": ""}


def add_due_posts(engine, *template_ids: str) -> None:
    at = dt.datetime.combine(DAY, dt.time(11, 54), tzinfo=TZ).astimezone(dt.UTC)
    with Session(engine) as s:
        for i, template_id in enumerate(template_ids):
            chat_id = f"wrSLT{i}"
            s.add(CustomerGroup(chat_id=chat_id, name=f"三里屯店福利群{i + 1}", owner_userid="owner_a"))
            s.add(SopPost(day=DAY, chat_id=chat_id, slot=1, template_id=template_id, step_key="1",
                          template_digest="d", channel="owner_task", sender="owner_a", scheduled_for=at,
                          window_ends_at=at + dt.timedelta(hours=3), status="due"))
        s.commit()


def folder_with(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "sop_templates"
    folder.mkdir(exist_ok=True)
    for name, body in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(body), encoding="utf-8")
    return folder


def test_reminder_lines_name_the_template_not_its_file_slug(engine, tmp_path):
    add_due_posts(engine, "afternoon-flash-sale", "deleted-template")
    folder = folder_with(tmp_path, flash=FLASH)
    sop = SopSettings(templates_dir=folder)
    client = Client()
    counts = send_reminders(engine, client, toolbar_url="http://scrm/toolbar", tz=TZ, now=NOW,
                            templates=lambda: jobs.load_templates(folder, sop))
    assert counts == {"sent": 1, "posts": 2}
    [message] = client.messages
    # A template removed since the post was planned gets neutral words, not its id.
    assert message["textcard"]["description"] == (
        "三里屯店福利群1 · 11:54 下午茶限时秒杀\n三里屯店福利群2 · 11:54 SOP 内容")
    assert "afternoon-flash-sale" not in str(message) and "deleted-template" not in str(message)


def test_refused_templates_still_never_show_the_slug(engine, tmp_path):
    add_due_posts(engine, "afternoon-flash-sale")
    folder = folder_with(tmp_path, flash=FLASH, broken="id: broken\nname: [oops\n")
    sop = SopSettings(templates_dir=folder)
    client = Client()
    send_reminders(engine, client, toolbar_url="http://scrm/toolbar", tz=TZ, now=NOW,
                   templates=lambda: jobs.load_templates(folder, sop))  # refused: a file is broken
    assert client.messages[0]["textcard"]["description"] == "三里屯店福利群1 · 11:54 SOP 内容"


def test_callers_that_pass_no_templates_get_neutral_words_and_names_are_read_only_when_due(engine):
    calls = []

    def names():
        calls.append(1)
        return {"afternoon-flash-sale": "下午茶限时秒杀"}

    assert pending_reminders(engine, NOW, tz=TZ, min_interval=dt.timedelta(seconds=60), template_names=names) == []
    assert calls == []  # nothing due: the templates were not read
    add_due_posts(engine, "afternoon-flash-sale")
    client = Client()
    send_reminders(engine, client, toolbar_url="http://scrm/toolbar", tz=TZ, now=NOW)
    assert client.messages[0]["textcard"]["description"] == "三里屯店福利群1 · 11:54 SOP 内容"
