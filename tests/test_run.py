"""The newcomer's first hour, as separate processes: `scrm run` on embedded defaults in an empty
folder, restarted, failing to start, and the commands people run beside it.

Each `scrm run` here is a real child process (`python -m scrm.cli run`), with its own data dir
and free ports, and every SCRM_ variable of the test environment removed, as on a fresh machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scrm.redisserver import free_port

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def fresh_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRM_")}
    env.update(COLUMNS="200", SCRM_WEB__PORT=str(free_port()), SCRM_SANDBOX__PORT=str(free_port()), **extra)
    return env


@pytest.fixture
def folder(tmp_path):
    for operators_folder in ("sop_templates", "layers", "journeys", "crm"):  # what operators edit, beside config
        shutil.copytree(ROOT / operators_folder, tmp_path / operators_folder)
    return tmp_path


def scrm(folder, *args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scrm.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def summary(stdout: str) -> dict[str, int]:
    return {line.split("│")[1].strip(): int(line.split("│")[2].strip())
            for line in stdout.splitlines() if line.count("│") == 3 and line.split("│")[2].strip().isdigit()}


def redis_servers_of(folder: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "redis-server" in line and str(folder) in line]


def test_run_twice_on_one_data_dir_keeps_the_same_corp_and_counts(folder):
    env = fresh_env()
    first = scrm(folder, "run", "--exit-after-demo", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "demo corp created" in first.stdout
    assert re.search(r"demo chain: 6 stores in .*北京.*, \d+ groups attached", first.stdout), first.stdout
    assert "demo: a new customer scanned" in first.stdout
    # The CRM demo: a rep's chats, calls and SMS through the real importers and the record builder.
    assert re.search(r"crm: .* is a sales rep: [1-9]\d* chat/call/SMS messages with [1-9]\d* customers imported, "
                     r"[1-9]\d* follow-up records built", first.stdout.replace("\n", " ")), first.stdout
    assert "stopping (--exit-after-demo)" in first.stdout and "scrm is running" not in first.stdout
    # Start-up output is what a person needs: no library chatter, no log lines, no tokens.
    for noise in ("setup plugin", "Context impl", "non-transactional DDL", "event=", "access_token="):
        assert noise not in first.stdout + first.stderr, [line for line in (first.stdout + first.stderr).splitlines()
                                                          if noise in line]
    assert (folder / ".scrm" / "scrm.log").read_text().count("callback_applied") >= 3  # it is in the log
    counts = summary(first.stdout)
    assert counts["customers"] > 0 and counts["customer groups"] >= 6 and counts["stores"] == 6

    for _ in range(2):
        env = fresh_env()  # other ports, same data dir
        again = scrm(folder, "run", "--exit-after-demo", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "demo corp loaded from" in again.stdout and "demo chain:" not in again.stdout
        assert "\ncrm: " not in again.stdout  # played once per data dir
        assert summary(again.stdout) == counts
    assert redis_servers_of(folder) == []
    # The QR images shown on the pages point at this run's sandbox, wherever it listens now.
    import sqlite3

    with sqlite3.connect(folder / ".scrm" / "scrm.db") as db:
        urls = [u for (u,) in db.execute("SELECT qr_code FROM store_codes WHERE status = 'active'")]
    assert urls and all(u.startswith(f"http://127.0.0.1:{env['SCRM_SANDBOX__PORT']}/") for u in urls), urls


def test_a_port_in_use_is_one_line_and_leaves_nothing_running(folder):
    import socket

    env = fresh_env()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env["SCRM_WEB__PORT"])))
        busy.listen()
        out = scrm(folder, "run", "--exit-after-demo", env=env, timeout=60)
    assert out.returncode == 2
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is in use" in errors[0] and "--port" in errors[0], out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert redis_servers_of(folder) == []
    # --port picks another one and the run works.
    ok = scrm(folder, "run", "--exit-after-demo", "--port", str(free_port()), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_a_missing_package_is_one_line_and_the_embedded_redis_is_stopped(folder):
    """What a fresh machine did when a dependency was not declared: the start failed half-way,
    after the private redis-server was up."""
    code = ("import sys; sys.modules['itsdangerous'] = None\n"
            "from scrm.cli import main; sys.argv = ['scrm', 'run', '--exit-after-demo']; main()")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, env=fresh_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "error: scrm run stopped: the Python package 'itsdangerous' is missing" in out.stdout.replace("\n", " ")
    assert "Traceback" not in out.stdout + out.stderr
    assert "Traceback" in (folder / ".scrm" / "scrm.log").read_text()  # the details are kept in the log
    assert redis_servers_of(folder) == []


def test_the_worker_refuses_to_start_without_the_corp_secret(folder):
    env = fresh_env(SCRM_REDIS__URL="redis://127.0.0.1:1/0")
    out = scrm(folder, "worker", env=env, timeout=60)
    assert out.returncode == 2
    assert out.stdout.replace("\n", " ").startswith("error: SCRM_WECOM__SECRET is not set")
    assert "Traceback" not in out.stdout + out.stderr


def test_init_says_where_the_secrets_come_from(folder):
    env = fresh_env()
    out = scrm(folder, "init", env=env)
    assert out.returncode == 0 and "secrets: .scrm/secrets.env" in out.stdout, out.stdout
    from_env = scrm(folder, "init", env=fresh_env(SCRM_DATA_DIR=str(folder / "prod"), SCRM_WECOM__CALLBACK_TOKEN="t",
                                                  SCRM_WECOM__ENCODING_AES_KEY="k" * 43))
    assert "secrets: from the environment" in from_env.stdout and not (folder / "prod" / "secrets.env").exists()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One `scrm run` left running, for the commands and pages people use beside it."""
    folder = tmp_path_factory.mktemp("running")
    shutil.copytree(ROOT / "sop_templates", folder / "sop_templates")
    env = fresh_env()
    proc = subprocess.Popen([sys.executable, "-m", "scrm.cli", "run"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if "scrm is running" in line:
            break
    assert proc.poll() is None, "".join(out)
    base = f"http://127.0.0.1:{env['SCRM_WEB__PORT']}"
    yield folder, env, base, "".join(out)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert redis_servers_of(folder) == []


def test_commands_work_beside_a_running_scrm_run(running):
    folder, env, base, _ = running
    listed = scrm(folder, "stores", "list", env=fresh_env())
    assert listed.returncode == 0 and "6 stores" in listed.stdout, listed.stdout + listed.stderr
    codes = scrm(folder, "stores", "codes", env=fresh_env())  # needs the embedded Redis and the sandbox
    assert codes.returncode == 0, codes.stdout + codes.stderr
    assert "12 unchanged" in codes.stdout.split("staff codes:")[1].splitlines()[0]
    second = scrm(folder, "run", "--exit-after-demo", env=fresh_env(), timeout=60)
    assert second.returncode == 2 and "another `scrm run`" in second.stdout and "Traceback" not in second.stdout


def test_a_command_without_scrm_run_says_what_to_start(folder):
    out = scrm(folder, "stores", "codes", env=fresh_env())
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert "no `scrm run` is running" in out.stdout.replace("\n", " "), out.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
# What a store field left empty looks like once rendered: a dangling query parameter, empty
# brackets, a sentence starting with the particle that followed the store name, a Python None.
HOLES = re.compile(r"store=(?:&|$|\s|\")|（\s*）|\(\s*\)|(?:^|\n)\s*的|\bNone\b|\{\{|\}\}")


def _require_chromium():
    from tests.conftest import REQUIRE

    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")


def _images_decoded(page) -> list[dict]:
    """Every <img> on the page once loaded: its src and natural width (0 = not an image)."""
    page.wait_for_load_state("networkidle")
    return page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src'), w: e.complete ? e.naturalWidth : 0}))")


def test_the_demo_chain_pages_work_on_a_phone(running):
    """/s, /g and /l of the demo chain at 390×844 in headless Chromium: every QR code is an image
    that decodes, no text has an empty store field, and the city picker routes 北京 to a Beijing store."""
    from playwright.sync_api import sync_playwright

    from scrm.sandbox.demo_chain import DEMO_STORES

    _require_chromium()
    folder, env, base, _ = running
    beijing = {st.name for st in DEMO_STORES if st.city == "北京"}
    shots = folder / "screenshots"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        for st in DEMO_STORES:
            for path in (f"/s/{st.code}", f"/g/{st.code}"):
                response = page.goto(base + path)
                assert response.status == 200, path
                images = _images_decoded(page)
                assert images and all(i["w"] > 0 for i in images), (path, images)
                text = page.inner_text("body")
                assert st.name in text and not HOLES.search(text), (path, text)
                links = page.eval_on_selector_all("a[href], img[src]", "els => els.map(e => e.href || e.src)")
                assert not [u for u in links if HOLES.search(u)], (path, links)
                # Nothing sticks out of a phone screen.
                assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
            page.screenshot(path=str(shots / f"g-{st.code}.png"), full_page=True)

        page.goto(base + "/l")
        assert page.eval_on_selector("#city", "s => s.value") == ""  # no city preselected
        page.select_option("#city", "北京")
        page.click("#cityform button[type=submit]")
        page.wait_for_selector("#result h2")
        routed = page.inner_text("#result h2")
        assert routed in beijing, routed
        images = _images_decoded(page)
        assert images and all(i["w"] > 0 for i in images), images
        assert not HOLES.search(page.inner_text("body"))
        page.screenshot(path=str(shots / "l-beijing.png"), full_page=True)
        browser.close()


def test_the_demo_chain_posts_have_every_store_field(running):
    """Every SOP post planned for the demo chain (today and tomorrow) renders with its store's
    name and code: the example templates use store fields and every demo group has a store."""
    from pathlib import Path

    from sqlmodel import Session, select

    from scrm.config import SopSettings
    from scrm.db import make_engine
    from scrm.groups.models import CustomerGroup
    from scrm.sop.jobs import load_templates
    from scrm.sop.models import SopPost
    from scrm.sop.sender import render_post
    from scrm.stores.models import Store

    folder, *_ = running
    templates = load_templates(Path(folder / "sop_templates"), SopSettings())
    engine = make_engine(f"sqlite:///{folder / '.scrm' / 'scrm.db'}")
    try:
        with Session(engine) as s:
            posts = s.exec(select(SopPost)).all()
            groups = {g.chat_id: g for g in s.exec(select(CustomerGroup))}
            stores = {st.code: st for st in s.exec(select(Store))}
        assert posts, "the demo chain has no planned posts"
        for post in posts:
            group = groups[post.chat_id]
            assert group.store_code in stores, group.name
            content, error = render_post(post, templates, group, stores[group.store_code])
            assert error is None, error
            texts = [content.get("text", {}).get("content", "")] + [
                v for a in content["attachments"] for v in a.get(a["msgtype"], {}).values() if isinstance(v, str)]
            assert not [t for t in texts if HOLES.search(t)], (post.template_id, texts)
    finally:
        engine.dispose()
