"""`scrm init` / `scrm run` write sandbox secrets once, and top up an old generated file with the
secrets of APIs added since (the order API, the CRM records API), so a newcomer's existing data dir
keeps working after an upgrade. Mutation tried: the top-up list left empty (old file kept as is):
test_an_old_generated_file_is_topped_up failed."""

from __future__ import annotations

import pytest

from scrm.cli import GENERATED, ensure_secrets
from scrm.config import get_settings, reset_settings_cache


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in ("SCRM_ORDERS__SECRET", "SCRM_CRM__SECRET", "SCRM_WECOM__CALLBACK_TOKEN",
                 "SCRM_WECOM__ENCODING_AES_KEY", "SCRM_WECOM__SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCRM_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    reset_settings_cache()
    yield tmp_path
    reset_settings_cache()


def _names(path) -> list[str]:
    return [line.split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line]


def test_a_new_data_dir_gets_every_secret(data_dir):
    path = ensure_secrets(data_dir)
    assert path is not None and (path.stat().st_mode & 0o777) == 0o600
    assert set(_names(path)) >= {"SCRM_WECOM__CALLBACK_TOKEN", "SCRM_WECOM__ENCODING_AES_KEY",
                                 "SCRM_WECOM__SECRET", "SCRM_ORDERS__SECRET", "SCRM_CRM__SECRET"}


def test_an_old_generated_file_is_topped_up(data_dir):
    path = data_dir / "secrets.env"
    path.write_text(f"{GENERATED} for the sandbox.\nSCRM_WECOM__CALLBACK_TOKEN=t\n"
                    "SCRM_WECOM__ENCODING_AES_KEY=" + "a" * 43 + "\nSCRM_WECOM__SECRET=s\n")
    ensure_secrets(data_dir)
    assert _names(path).count("SCRM_ORDERS__SECRET") == 1 and _names(path).count("SCRM_CRM__SECRET") == 1
    before = path.read_text()
    ensure_secrets(data_dir)  # a second start adds nothing
    assert path.read_text() == before


def test_a_secret_from_the_environment_is_not_shadowed(data_dir, monkeypatch):
    path = data_dir / "secrets.env"
    path.write_text(f"{GENERATED} for the sandbox.\nSCRM_ORDERS__SECRET=o\n")
    monkeypatch.setenv("SCRM_CRM__SECRET", "from-env")
    reset_settings_cache()
    ensure_secrets(data_dir)
    assert "SCRM_CRM__SECRET" not in _names(path)
    assert get_settings().crm.secret.get_secret_value() == "from-env"


def test_a_hand_written_file_is_left_alone(data_dir):
    path = data_dir / "secrets.env"
    path.write_text("SCRM_WECOM__SECRET=mine\n")
    ensure_secrets(data_dir)
    assert path.read_text() == "SCRM_WECOM__SECRET=mine\n"
