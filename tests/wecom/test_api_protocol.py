"""The outbound WeCom boundary is checked by mypy: WeComClient satisfies every Protocol of
scrm.wecom.api (the ``_implements_the_boundary`` check at the bottom of client.py), and a client
that drifts from a Protocol is refused.

Mutation tried: ``WeComClient.get_join_way(self, config_id: int)`` (was ``str``) made
test_wecom_package_type_checks fail with "Following member(s) of "WeComClient" have conflicts".
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")
ROOT = Path(__file__).resolve().parents[2]


def _mypy(tmp_path: Path, *targets: str) -> tuple[str, int]:
    out, err, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--follow-imports=silent",
        "--cache-dir", str(tmp_path / ".mypy_cache"), *targets,
    ])
    return out + err, status


def test_wecom_package_type_checks(tmp_path):
    out, status = _mypy(tmp_path, str(ROOT / "scrm" / "wecom"))
    assert status == 0, out


def test_a_client_that_drifts_from_the_protocol_is_refused(tmp_path):
    fake = tmp_path / "drifted.py"
    fake.write_text(textwrap.dedent("""
        from scrm.wecom.api import AppMessageAPI, SopSendAPI
        from scrm.wecom.messages import AppMessage

        class RobotOnly:
            def send_robot_message(self, key: str, message: dict) -> None: ...

        class WrongAppMessages:
            def send_app_message(self, payload: AppMessage, urgent: bool) -> dict:
                return {}

        a: SopSendAPI = RobotOnly()  # no add_msg_template & co
        b: AppMessageAPI = WrongAppMessages()  # an extra required argument
    """), encoding="utf-8")
    out, status = _mypy(tmp_path, str(fake))
    assert status == 1
    assert 'drifted.py:12: error: Incompatible types in assignment (expression has type "RobotOnly"' in out
    assert 'drifted.py:13: error: Incompatible types in assignment (expression has type "WrongAppMessages"' in out
