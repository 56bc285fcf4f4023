"""The migrations match the models on both backends, and the newcomer's `scrm run` works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from scrm.redisserver import free_port


def test_alembic_head_matches_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_scrm_run_demo_on_embedded_defaults(tmp_path):
    env = dict(os.environ, SCRM_WEB__PORT=str(free_port()), SCRM_SANDBOX__PORT=str(free_port()), COLUMNS="200")
    for key in list(env):
        if key.startswith("SCRM_") and key not in ("SCRM_WEB__PORT", "SCRM_SANDBOX__PORT"):
            env.pop(key)
    shutil.copytree(Path(__file__).parent.parent / "sop_templates", tmp_path / "sop_templates")
    out = subprocess.run([sys.executable, "-m", "scrm.cli", "run", "--exit-after-demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scrm is running" in out.stdout
    # The example SOP templates are planned for the synced demo groups (some template runs every day).
    planned = re.search(r"SOP: (\d+) posts planned for \S+ across (\d+) groups", out.stdout)
    assert planned and int(planned.group(1)) > 0 and int(planned.group(2)) == 3, out.stdout
    assert "access_token=" not in out.stdout + out.stderr  # tokens never logged
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in out.stdout.splitlines() if line.count("│") == 3}
    assert int(lines["callbacks (inbox)"]) >= 3
    assert int(lines["welcome messages"]) == 1
    assert (tmp_path / ".scrm" / "scrm.db").exists()
    secrets = (tmp_path / ".scrm" / "secrets.env").read_text()
    assert "SCRM_WECOM__ENCODING_AES_KEY=" in secrets
    assert (tmp_path / ".scrm" / "secrets.env").stat().st_mode & 0o077 == 0
