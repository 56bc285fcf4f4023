"""Who is a person at ``/t/{code}``: a table of user agents as they arrive, each with the class and
the reason the classifier must give. The strings were typed for this table in the shapes these
clients send (product token, version, platform), not copied from another project's fixtures.

Mutations tried (each made a row below fail, then was undone):
- dropped the ``micromessenger/`` rule → the WeChat rows came out ``browser`` (reason differs);
- moved the WeCom check after the WeChat one → the ``wxwork`` rows said ``wechat``;
- loosened the self-declared pattern to a bare ``bot`` substring → the CUBOT phone became a bot;
- removed ``sec-purpose`` from the prefetch headers → the Chrome prefetch row counted as a person;
- matched HTTP libraries anywhere instead of at the start → the Android shop-app web view, whose UA
  carries ``okhttp/`` after its browser part, became a bot.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scrm.clicks.agents import AgentClass, AgentReason, classify

P, V, B = AgentClass.PERSON, AgentClass.PREVIEW, AgentClass.BOT
R = AgentReason

IPHONE_WECHAT = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Mobile/15E148 MicroMessenger/8.0.49(0x18003129) NetType/WIFI Language/zh_CN")
ANDROID_WECHAT = ("Mozilla/5.0 (Linux; Android 13; V2227A Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.116 Mobile Safari/537.36 XWEB/1110005 "
                  "MMWEBSDK/20240301 MMWEBID/2287 MicroMessenger/8.0.48.2580(0x28003052) WeChat/arm64 "
                  "Weixin NetType/5G Language/zh_CN ABI/arm64")
WINDOWS_WECHAT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/107.0.0.0 Safari/537.36 NetType/WIFI MicroMessenger/7.0.20.1781(0x6700143B) "
                  "WindowsWechat(0x63090a13) XWEB/9129 Flue")
IPHONE_WECOM = ("Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                "Mobile/15E148 wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh ColorScheme/Light")
ANDROID_WECOM = ("Mozilla/5.0 (Linux; Android 12; PGBM10 Build/SP1A.210812.016; wv) AppleWebKit/537.36 "
                 "(KHTML, like Gecko) Version/4.0 Chrome/109.0.5414.86 Mobile Safari/537.36 wxwork/4.1.20 "
                 "MicroMessenger/7.0.1 NetType/WIFI Language/zh Lang/zh ColorScheme/Dark")
MAC_WECOM = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "wxwork/4.1.23 (MicroMessenger/6.2) WeChat/2.0.4 Language/zh ColorScheme/Light")
DESKTOP_CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/124.0.0.0 Safari/537.36")
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Version/17.5 Mobile/15E148 Safari/604.1")
CUBOT_PHONE = ("Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/118.0.0.0 Mobile Safari/537.36")
APP_WEBVIEW_OKHTTP = ("Mozilla/5.0 (Linux; Android 11; M2012K11AC; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Version/4.0 Chrome/96.0.4664.104 Mobile Safari/537.36 okhttp/4.9.1 MallApp/3.2")
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 "
            "Safari/537.36")

ROWS = [
    # people
    (IPHONE_WECHAT, P, R.WECHAT),
    (ANDROID_WECHAT, P, R.WECHAT),
    (WINDOWS_WECHAT, P, R.WECHAT),
    (IPHONE_WECOM, P, R.WECOM),
    (ANDROID_WECOM, P, R.WECOM),
    (MAC_WECOM, P, R.WECOM),
    (DESKTOP_CHROME, P, R.BROWSER),
    (IPHONE_SAFARI, P, R.BROWSER),
    (CUBOT_PHONE, P, R.BROWSER),
    (APP_WEBVIEW_OKHTTP, P, R.BROWSER),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0", P, R.BROWSER),
    # link-preview fetchers
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", V, R.PREVIEW_FETCHER),
    ("Slackbot 1.0 (+https://api.slack.com/robots)", V, R.PREVIEW_FETCHER),
    ("TelegramBot (like TwitterBot)", V, R.PREVIEW_FETCHER),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", V, R.PREVIEW_FETCHER),
    ("Twitterbot/1.0", V, R.PREVIEW_FETCHER),
    ("WhatsApp/2.24.10.79 A", V, R.PREVIEW_FETCHER),
    ("WhatsApp/2.2413.51 i", V, R.PREVIEW_FETCHER),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", V, R.PREVIEW_FETCHER),
    ("LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)", V,
     R.PREVIEW_FETCHER),
    ("Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com", V,
     R.PREVIEW_FETCHER),
    # crawlers
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", B, R.CRAWLER),
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.6422.76 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", B,
     R.CRAWLER),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", B, R.CRAWLER),
    ("Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)", B, R.CRAWLER),
    ("Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)", B, R.CRAWLER),
    ("Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 "
     "(compatible; Bytespider; spider-feedback@bytedance.com)", B, R.CRAWLER),
    # HTTP libraries and scripts
    ("curl/8.5.0", B, R.HTTP_LIBRARY),
    ("Wget/1.21.4", B, R.HTTP_LIBRARY),
    ("python-requests/2.32.3", B, R.HTTP_LIBRARY),
    ("python-httpx/0.27.0", B, R.HTTP_LIBRARY),
    ("Python/3.11 aiohttp/3.9.5", B, R.HTTP_LIBRARY),
    ("Go-http-client/1.1", B, R.HTTP_LIBRARY),
    ("Go-http-client/2.0", B, R.HTTP_LIBRARY),
    ("okhttp/4.12.0", B, R.HTTP_LIBRARY),
    ("Java/17.0.2", B, R.HTTP_LIBRARY),
    # headless browsers
    (HEADLESS, B, R.HEADLESS_BROWSER),
    # robots naming themselves that no list knows
    ("Mozilla/5.0 (compatible; FooFeedbot; +https://example.net/bot)", B, R.SELF_DECLARED),
    ("ShopMonitorCrawler/3.1", B, R.SELF_DECLARED),
    # nothing at all
    ("", B, R.EMPTY_UA),
    ("   ", B, R.EMPTY_UA),
    (None, B, R.EMPTY_UA),
]


@pytest.mark.parametrize(("ua", "agent", "reason"), ROWS, ids=[f"{i}-{r[2]}" for i, r in enumerate(ROWS)])
def test_user_agent_table(ua, agent, reason):
    verdict = classify(ua)
    assert (verdict.agent, verdict.reason) == (agent, reason), verdict
    assert verdict.counts is (agent is AgentClass.PERSON)


@pytest.mark.parametrize("headers", [
    {"Purpose": "prefetch"},
    {"purpose": "Prefetch"},
    {"Sec-Purpose": "prefetch"},
    {"sec-purpose": "prefetch;prerender"},
    {"Sec-Purpose": "prefetch;anonymous-client-ip"},
    {"X-Moz": "prefetch"},
])
def test_prefetch_headers_make_even_a_wechat_reader_a_preview(headers):
    """A speculative fetch is not a person opening the link, even from WeChat's web view."""
    for ua in (DESKTOP_CHROME, IPHONE_WECHAT):
        verdict = classify(ua, headers)
        assert (verdict.agent, verdict.reason) == (AgentClass.PREVIEW, AgentReason.PREFETCH_HEADER)
        assert not verdict.counts


def test_unrelated_headers_leave_a_person_a_person():
    headers = {"Accept-Language": "zh-CN,zh;q=0.9", "Sec-Fetch-Mode": "navigate", "Purpose": ""}
    assert classify(IPHONE_WECHAT, headers).reason is AgentReason.WECHAT


def test_head_request_is_a_link_checker():
    verdict = classify(DESKTOP_CHROME, method="HEAD")
    assert (verdict.agent, verdict.reason) == (AgentClass.BOT, AgentReason.HEAD_REQUEST)
    assert classify(DESKTOP_CHROME, method="get").counts


def test_verdict_names_what_decided():
    """The reason goes to the log with the token that triggered it, so a wrong call can be traced."""
    assert classify("curl/8.5.0").matched == "curl"
    assert classify(HEADLESS).matched == "HeadlessChrome"
    assert classify("WhatsApp/2.24.10.79 A").matched == "WhatsApp"
    assert classify(DESKTOP_CHROME, {"Sec-Purpose": "prefetch"}).matched == "sec-purpose: prefetch"


@settings(max_examples=300, deadline=None)
@given(ua=st.one_of(st.none(), st.text(max_size=300), st.sampled_from([row[0] for row in ROWS])),
       headers=st.dictionaries(st.sampled_from(["Purpose", "sec-purpose", "X-Moz", "Accept"]),
                               st.one_of(st.sampled_from(["prefetch", "Prefetch ", "prefetch;prerender", "", "*/*"]),
                                         st.text(max_size=40))),
       method=st.sampled_from(["GET", "HEAD", "get", "POST"]))
def test_any_request_gets_a_verdict_and_a_prefetch_never_counts(ua, headers, method):
    """Whatever arrives at /t/ gets a verdict (no exception on odd text); a prefetch hint or a HEAD
    never counts. Mutation tried: the prefetch check moved after the WeChat rule → failed here and
    in the header test above."""
    verdict = classify(ua, headers, method)
    assert verdict.counts is (verdict.agent is AgentClass.PERSON)
    if any(k.lower() in ("purpose", "sec-purpose") and v.lower().split(";")[0].strip() == "prefetch"
           for k, v in headers.items()):
        assert not verdict.counts
    if method == "HEAD":
        assert not verdict.counts
