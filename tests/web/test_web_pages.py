"""The pages customers and clerks reach, through the app as served: the index, the Chinese 404
page with a way on, store codes in any case, the staff page's print view and posters, and routing
a customer who picks a city to a store with a group."""

from __future__ import annotations

import json
import re

import pytest
from sqlmodel import Session

from scrm.config import RoutingSettings
from scrm.routing.locate import GroupStore, decide, rank_city_candidates
from scrm.routing.nearest import NearestStoreIndex, StorePoint
from scrm.stores.models import Store
from scrm.web import pages
from tests.web.shop import HOSTILE, make_app

CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese_page(r) -> bool:
    return (r.headers["content-type"].startswith("text/html") and '<html lang="zh-CN">' in r.text
            and 'name="viewport"' in r.text and len(CJK.findall(r.text)) > 10)


# -- the index -------------------------------------------------------------------------------

def test_the_index_names_the_service_and_links_every_open_store(web):
    r = web.get("/")
    assert r.status_code == 200 and is_chinese_page(r)
    assert "门店福利群服务" in r.text
    for code, name, city in (("SLT", "南京西路店", "上海"), ("BJ2", "望京店", "北京"), ("GZ1", "天河店", "广州")):
        assert f'href="/s/{code}"' in r.text and f'href="/g/{code}"' in r.text
        assert name in r.text and city in r.text
    assert "/g/OLD01" not in r.text and "西四店" not in r.text  # closed
    assert 'href="/l"' in r.text and 'href="/readyz"' in r.text
    assert 'href="/docs"' in r.text and 'href="/metrics"' in r.text  # public here (as in the sandbox)
    assert 'href="/toolbar"' not in r.text  # not mounted on this app


def test_the_index_pages_through_many_stores(web, monkeypatch):
    monkeypatch.setattr(pages, "STORES_PER_PAGE", 4)
    first, second = web.get("/"), web.get("/", params={"page": 2})
    assert "第 1 / 2 页" in first.text and 'href="/?page=2"' in first.text and "下一页" in first.text
    assert "上一页" in second.text and "下一页" not in second.text
    shown = [re.findall(r'href="/g/(\w+)"', p.text) for p in (first, second)]
    assert [len(codes) for codes in shown] == [4, 2]
    assert sorted(shown[0] + shown[1]) == ["BJ1", "BJ2", "BJ3", "BJ4", "GZ1", "SLT"]
    assert "没有更多门店了" in web.get("/", params={"page": 9}).text


def test_the_index_hides_operator_links_from_anonymous_visitors_in_production(shop):
    from fastapi.testclient import TestClient

    with TestClient(make_app(shop, operator_pages_public=False, operator_token="s3cret")) as client:
        anon = client.get("/").text
        assert 'href="/docs"' not in anon and 'href="/metrics"' not in anon and 'href="/readyz"' in anon
        operator = client.get("/", headers={"Authorization": "Bearer s3cret"}).text
        assert 'href="/docs"' in operator and 'href="/metrics"' in operator


# -- not found -------------------------------------------------------------------------------

BAD_URLS = ["/g/OLD01", "/g/NOPE", "/t/nope", "/t/a%2Fb", "/g/a/b", "/s/a/b", "/s/NOPE", "/g/", "/g",
            "/s/SLT/poster?staff=ghost", "/s/GZ1/poster?code=group", "/l/x",
            "/g/" + HOSTILE.replace("/", "%2F"), "/g/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_customer_url_is_a_chinese_404_page_with_a_way_on(web, url):
    r = web.get(url)
    assert r.status_code == 404 and is_chinese_page(r)
    assert 'href="/l"' in r.text and "找离你最近的门店群" in r.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    assert "alert" not in r.text and "onerror" not in r.text and "<img" not in r.text


def test_the_input_is_never_echoed(web):
    for url, raw in (("/g/OLD01", "OLD01"), ("/g/NOPE", "NOPE"), ("/t/nope", "nope"), ("/t/a%2Fb", "a/b"),
                     ("/s/SLT/poster?staff=ghost", "ghost")):
        assert raw not in web.get(url).text


def test_a_closed_store_offers_the_nearest_open_store_of_its_city_with_a_group(web):
    r = web.get("/g/old01")
    assert r.status_code == 404 and "已经停止营业" in r.text
    # BJ3 (西单) is next to the closed 西四店; BJ4 has more room and BJ2 a lower code, but both are
    # farther; BJ1 has no group.
    assert 'href="/g/BJ3"' in r.text and "加入西单店福利群" in r.text
    assert not re.search(r"/g/BJ[124]", r.text)


def test_an_open_store_without_a_group_code_offers_one_of_its_city(web):
    r = web.get("/g/BJ1")
    assert r.status_code == 200 and "正在准备中" in r.text
    assert re.search(r'href="/g/BJ[234]"', r.text) and 'href="/l"' in r.text


def test_the_apis_keep_their_json_and_plain_errors(web):
    for url in ("/api/nope", "/toolbar/api/posts", "/api/route/x"):
        r = web.get(url)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", url
        assert r.json() == {"detail": "Not Found"}
    assert web.get("/api/route", params={"lat": 31.2}).headers["content-type"] == "application/json"
    assert web.get("/wecom/callback").headers["content-type"].startswith("text/plain")


def test_a_browser_on_an_unknown_path_gets_the_page_a_script_gets_json(web):
    html = {"Accept": "text/html,application/xhtml+xml"}
    browser = web.get("/some/old/poster", headers=html)
    assert browser.status_code == 404 and is_chinese_page(browser)
    assert web.get("/some/old/poster", headers={"Accept": "application/json"}).json() == {"detail": "Not Found"}
    for api in ("/api/nope", "/toolbar/api/nope", "/wecom/nope"):  # APIs answer JSON even to a browser
        assert web.get(api, headers=html).json() == {"detail": "Not Found"}, api


# -- store codes ignore case -------------------------------------------------------------------

def test_store_codes_in_urls_ignore_case(web):
    for url in ("/s/slt", "/s/Slt", "/g/slt", "/s/slt/poster?code=group"):
        r = web.get(url)
        assert r.status_code == 200 and "南京西路店" in r.text, url
    assert 'href="/s/SLT/poster?code=group"' in web.get("/s/slt").text  # links use the canonical code
    assert web.get("/api/route", params={"city": "上海"}).json()["group_page"] == "/g/SLT"


def test_an_exact_code_wins_over_another_case(web, shop):
    with Session(shop) as s:
        s.add(Store(code="slt", name="小写店", city="上海"))
        s.commit()
    assert "小写店" in web.get("/s/slt").text and "南京西路店" in web.get("/s/SLT").text


# -- the staff page ------------------------------------------------------------------------------

def test_the_staff_page_shows_names_and_corp_time_and_keeps_operator_detail_off_print(web):
    r = web.get("/s/SLT")
    assert r.status_code == 200 and is_chinese_page(r)
    assert "张三" in r.text and "王五" in r.text and "李四" in r.text
    assert ">zhangsan<" not in r.text and "zhangsan 联系我" not in r.text  # names, never userids as names
    assert "群主 张三" in r.text
    assert "2026-11-24 11:53" in r.text and "03:53" not in r.text  # Asia/Shanghai, not UTC
    # The failed code's WeCom error and the commands are only inside the operator's noprint block.
    notes = re.findall(r'<div class="card operator noprint">.*?</div>', r.text, re.S)
    assert any("errcode 41054" in n for n in notes) and any("请联系运营人员" in n for n in notes)
    outside = re.sub(r'<div class="card operator noprint">.*?</div>', "", r.text, flags=re.S)
    assert "errcode" not in outside and "scrm stores" not in outside
    assert 'href="/s/SLT/poster?staff=zhangsan"' in r.text


def test_in_production_clerks_see_what_to_ask_not_the_technical_detail(shop):
    from fastapi.testclient import TestClient

    with TestClient(make_app(shop, operator_pages_public=False, operator_token="s3cret")) as client:
        clerk = client.get("/s/SLT")
        assert "请联系运营人员" in clerk.text
        assert "errcode" not in clerk.text and "scrm stores" not in clerk.text
        assert client.get("/s/SLT", params={"detail": 1}).status_code == 401  # the browser asks for the token
        operator = client.get("/s/SLT", params={"detail": 1}, auth=("operator", "s3cret"))
        assert "errcode 41054" in operator.text and "scrm stores codes" in operator.text


def test_the_time_zone_is_the_corps(shop):
    from fastapi.testclient import TestClient

    with TestClient(make_app(shop, timezone="Europe/London")) as client:
        assert "2026-11-24 03:53" in client.get("/s/SLT").text


def test_a_poster_has_one_big_code_the_store_and_a_call_to_action(web):
    group = web.get("/s/SLT/poster", params={"code": "group"})
    assert group.status_code == 200 and is_chinese_page(group)
    assert group.text.count('class="qr"') == 1 and "扫码加入门店福利群" in group.text and "南京西路店" in group.text
    assert "@page { size: A4" in group.text
    staff = web.get("/s/SLT/poster", params={"staff": "zhangsan"})
    assert staff.status_code == 200 and "扫码添加张三的企业微信" in staff.text and staff.text.count('class="qr"') == 1
    assert web.get("/s/SLT/poster", params={"staff": "lisi"}).status_code == 404  # no QR: nothing to print


# -- routing by city ------------------------------------------------------------------------------

def test_decide_routes_a_city_to_its_best_store_with_a_group_unless_the_operator_chose_one():
    index = NearestStoreIndex([StorePoint("SLT", 31.2304, 121.4737, "上海")])
    kw = dict(radius_km=5, default_store="", open_codes={"SLT", "BJ1", "BJ2", "BJ3"})
    chosen = decide(index, None, None, city="北京", city_stores={}, city_candidates=["BJ2", "BJ3"], **kw)
    assert (chosen.store_code, chosen.reason) == ("BJ2", "city")
    override = decide(index, None, None, city="北京", city_stores={"北京": "BJ1"}, city_candidates=["BJ2"], **kw)
    assert override.store_code == "BJ1"
    closed_first = decide(index, None, None, city="北京", city_stores={}, city_candidates=["BJ9", "BJ3"], **kw)
    assert closed_first.store_code == "BJ3"
    assert decide(index, None, None, city="北京", city_stores={}, city_candidates=[], **kw).reason == "none"
    near = decide(index, 31.24, 121.50, city="北京", city_stores={}, city_candidates=["BJ2"], **kw)
    assert near.reason == "nearest" and near.store_code == "SLT"


def test_rank_city_candidates_prefers_room_then_code():
    stores = [GroupStore("B", "北京", None, None, 50), GroupStore("A", "北京", None, None, 50),
              GroupStore("C", "北京", None, None, 190)]
    assert rank_city_candidates(stores) == ["C", "A", "B"]


def test_picking_beijing_routes_to_an_open_store_with_a_group(web):
    r = web.get("/api/route", params={"city": "北京"}).json()
    # BJ4 has the most room of the three with a group (BJ2 would come first by code); BJ1 has no group.
    assert r["reason"] == "city" and r["store"]["code"] == "BJ4"
    assert r["group_page"] == "/g/BJ4" and r["qr_code"].startswith("data:image/png")
    assert web.get("/api/route", params={"city": "广州"}).json()["store"] is None  # GZ1 has no group


def test_the_operator_city_store_still_wins(shop):
    from fastapi.testclient import TestClient

    settings = RoutingSettings(city_stores={"北京": "BJ3"})
    with TestClient(make_app(shop, routing_settings=settings)) as client:
        assert client.get("/api/route", params={"city": "北京"}).json()["store"]["code"] == "BJ3"


def test_the_city_picker_is_labelled_unselected_and_lists_cities_with_groups(web):
    r = web.get("/l")
    assert r.status_code == 200 and is_chinese_page(r)
    assert '<label for="city">选择城市</label>' in r.text and 'id="city"' in r.text
    options = re.findall(r'<option value="([^"]*)"([^>]*)>', r.text)
    assert [v for v, _ in options] == ["", "上海", "北京"]  # 广州 has no group to join
    assert [v for v, attrs in options if "selected" in attrs] == [""]  # the placeholder, not a city
    assert "location.protocol !== \"https:\"" in r.text  # no geolocation prompt on plain HTTP
    chosen = web.get("/l", params={"city": "北京"}).text
    assert re.search(r'<option value="北京" selected', chosen)
