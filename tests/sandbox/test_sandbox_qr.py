"""The sandbox's QR codes are images, as WeCom's are: the ``qr_code`` URL of a contact way or join way
answers a PNG whose QR code holds the URL of the scan page, and the scan page still lets a person
scan as a new customer."""

from __future__ import annotations

import struct
import zlib

import pytest
import segno
from fastapi.testclient import TestClient

from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.wecom.client import WeComClient

CORP, SECRET = "wwsandboxqr", "sb-secret"
BASE = "http://sandbox"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def read_png_grey(data: bytes) -> tuple[int, int, list[list[int]]]:
    """(width, height, rows of 0/1 pixels) of a 1-bit greyscale PNG, with the stdlib only."""
    assert data[:8] == PNG_SIGNATURE
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(kind + chunk) == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert (depth, colour, interlace) == (1, 0, 0), "expected 1-bit greyscale, not interlaced"
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows, prev = [], bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(stride):  # PNG filters; bytes per pixel is 1 at this depth
            left = cur[i - 1] if i else 0
            up, ul = prev[i], prev[i - 1] if i else 0
            if kind == 1:
                cur[i] = (cur[i] + left) & 0xFF
            elif kind == 2:
                cur[i] = (cur[i] + up) & 0xFF
            elif kind == 3:
                cur[i] = (cur[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                cur[i] = (cur[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 0xFF
        rows.append([(cur[x // 8] >> (7 - x % 8)) & 1 for x in range(width)])
        prev = cur
    return width, height, rows


@pytest.fixture
def sandbox(clock):
    sb = Sandbox(CORP, SECRET, clock=clock, qr_base_url=f"{BASE}/sandbox/qr/")
    sb.add_member("zhangsan", "张三")
    sb.add_member("lisi", "李四")
    return sb


@pytest.fixture
def api(sandbox):
    return TestClient(create_sandbox_app(sandbox), base_url=BASE)


@pytest.fixture
def client(api):
    return WeComClient(CORP, SECRET, f"{BASE}/cgi-bin/", http=api, sleep=lambda s: None)


def assert_qr_image_of(api, qr_code_url: str, content: str) -> None:
    r = api.get(qr_code_url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    width, height, pixels = read_png_grey(r.content)
    assert width == height and 300 <= width <= 400  # a size an <img> shows as it is
    # The image is the QR code of ``content`` (4 modules of white quiet zone around it).
    matrix = segno.make(content, error="m", micro=False).matrix
    modules = len(matrix) + 8
    assert width % modules == 0
    scale = width // modules
    seen = [[1 - pixels[(y + 4) * scale + scale // 2][(x + 4) * scale + scale // 2] for x in range(len(matrix))]
            for y in range(len(matrix))]  # PNG: 1 is white; QR matrix: 1 is dark
    assert seen == [list(row) for row in matrix]
    assert all(all(p == 1 for p in row) for row in pixels[: 4 * scale])  # the quiet zone above is white


def test_contact_way_and_join_way_qr_codes_are_png_images_of_their_scan_page(sandbox, api, client):
    way = client.add_contact_way(type=2, scene=2, state="store_a", user=["zhangsan", "lisi"])
    cid = way["config_id"]
    assert way["qr_code"] == client.get_contact_way(cid)["qr_code"] == f"{BASE}/sandbox/qr/{cid}.png"
    assert_qr_image_of(api, way["qr_code"], f"{BASE}/sandbox/qr/{cid}")

    group = sandbox.create_group("zhangsan", "三里屯店福利群1", ["lisi"])
    jid = client.add_join_way(scene=2, chat_id_list=[group.chat_id], state="grp_a")
    join_qr = client.get_join_way(jid)["qr_code"]
    assert join_qr == f"{BASE}/sandbox/qr/{jid}.png"
    assert_qr_image_of(api, join_qr, f"{BASE}/sandbox/qr/{jid}")

    snapshot = sandbox.snapshot()
    assert [w["qr_code"] for w in snapshot["contact_ways"]] == [way["qr_code"]]
    assert [w["qr_code"] for w in snapshot["join_ways"]] == [join_qr]
    # the same bytes every time (cached per config id)
    assert api.get(join_qr).content == api.get(join_qr).content


def test_unknown_or_deleted_qr_codes_are_404(sandbox, api, client):
    assert api.get("/sandbox/qr/nope.png").status_code == 404
    assert api.get("/sandbox/qr/nope").status_code == 404
    assert api.post("/sandbox/qr/nope/scan").status_code == 404
    cid = client.add_contact_way(type=1, scene=2, user=["zhangsan"])["config_id"]
    assert api.get(f"/sandbox/qr/{cid}.png").status_code == 200
    client.del_contact_way(cid)
    assert api.get(f"/sandbox/qr/{cid}.png").status_code == 404


def test_the_scan_page_lets_a_person_scan_as_a_new_customer(sandbox, api, client):
    way = client.add_contact_way(type=2, scene=2, state="store_a", remark="三里屯店<导购码>",
                                 user=["zhangsan", "lisi"])
    page = api.get(f"/sandbox/qr/{way['config_id']}", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page.text
    assert "扫码（以新顾客身份）" in page.text and "张三 (zhangsan)" in page.text and "李四 (lisi)" in page.text
    assert "三里屯店&lt;导购码&gt;" in page.text and "<导购码>" not in page.text
    assert f"src='{way['config_id']}.png'" in page.text  # the QR image itself, relative to the page

    # the page's form, as a browser posts it: a result page, and the customer now follows zhangsan
    done = api.post(f"/sandbox/qr/{way['config_id']}/scan", data={"name": "段誉"},
                    headers={"accept": "text/html"})
    assert done.status_code == 200 and "段誉" in done.text and "张三 (zhangsan)" in done.text
    [customer] = [c for c in sandbox.customers.values() if c.name == "段誉"]
    assert sandbox.follows[("zhangsan", customer.external_userid)].state == "store_a"
    assert sandbox.callbacks[-1].plaintext.count("add_external_contact") == 1

    # an API client gets the action's JSON
    scanned = api.post(f"/sandbox/qr/{way['config_id']}/scan")
    assert scanned.status_code == 200 and scanned.json()["userid"] == "lisi"


def test_the_join_way_scan_page_joins_the_group(sandbox, api, client):
    group = sandbox.create_group("zhangsan", "望京店福利群1", ["lisi"])
    jid = client.add_join_way(scene=2, chat_id_list=[group.chat_id], state="grp_b")
    page = api.get(f"/sandbox/qr/{jid}")
    assert page.status_code == 200 and "望京店福利群1" in page.text and "「加入群聊」" in page.text
    done = api.post(f"/sandbox/qr/{jid}/scan", data={"name": "乔峰"}, headers={"accept": "text/html"})
    assert done.status_code == 200 and "望京店福利群1" in done.text
    assert [sandbox.customers[m.userid].name for m in sandbox.groups[group.chat_id].members if m.type == 2] == ["乔峰"]
