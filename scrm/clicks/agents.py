"""Is this request a person following a link, or a machine fetching it?

Managers judge a post by its clicks, and a link posted into a group is fetched by machines before
(and besides) any person: chat apps unfurl it into a preview card, browsers prefetch it, crawlers
and scripts follow it. Those requests are recorded (the raw log stays complete) but never counted.

The rule, checked in this order, first match wins:

1. no user agent at all → bot (``empty_ua``): every browser and in-app web view sends one;
2. ``Purpose: prefetch`` / ``Sec-Purpose: prefetch…`` / ``X-Moz: prefetch`` → preview
   (``prefetch_header``): the browser fetched the page speculatively, nobody opened it yet;
3. a HEAD request → bot (``head_request``): link checkers look, people's browsers GET;
4. a known link-preview fetcher (Slackbot, TelegramBot, facebookexternalhit, Twitterbot,
   WhatsApp, Discordbot, LinkedInBot, SkypeUriPreview …) → preview (``preview_fetcher``);
5. a headless browser (HeadlessChrome, PhantomJS, Lighthouse) → bot (``headless_browser``);
6. an HTTP library at the start of the UA (curl, Wget, python-requests, httpx, Go-http-client,
   okhttp, Java …) → bot (``http_library``);
7. a known crawler (Googlebot, bingbot, Baiduspider, Sogou, Bytespider, YandexBot …) → bot
   (``crawler``);
8. WeCom's web view (``wxwork``) → person (``wecom``); WeChat's in-app browser
   (``MicroMessenger``) → person (``wechat``): this is where our customers read posts;
9. a self-declared robot: ``compatible; somethingbot`` or ``somebot/1.0`` or a ``+http`` contact
   URL → bot (``self_declared``). Only these shapes: a bare ``bot`` substring would take the
   CUBOT phone (``Android 10; CUBOT X30``) for a robot;
10. anything else → person (``browser``).

WeChat and WeCom publish no user agent for their own link checkers or preview fetchers. What they
send is caught by the generic rules (1, 3, 5, 6, 9); when a real one is seen in the logs that slips
through, add its token to ``_PREVIEW_FETCHERS`` with a test row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class AgentClass(StrEnum):
    """What fetched the link; only ``person`` clicks are counted."""

    PERSON = "person"
    PREVIEW = "preview"  # fetched to build a preview card or speculatively, not opened
    BOT = "bot"


class AgentReason(StrEnum):
    """Which rule decided (kept with the raw click so a wrong verdict can be traced)."""

    EMPTY_UA = "empty_ua"
    PREFETCH_HEADER = "prefetch_header"
    HEAD_REQUEST = "head_request"
    PREVIEW_FETCHER = "preview_fetcher"
    HEADLESS_BROWSER = "headless_browser"
    HTTP_LIBRARY = "http_library"
    CRAWLER = "crawler"
    WECOM = "wecom"
    WECHAT = "wechat"
    SELF_DECLARED = "self_declared"
    BROWSER = "browser"


@dataclass(frozen=True)
class AgentVerdict:
    agent: AgentClass
    reason: AgentReason
    matched: str | None = None  # the token or header that decided, for the logs

    @property
    def counts(self) -> bool:
        """Only a person's click can be a (unique) click."""
        return self.agent is AgentClass.PERSON


# (lower-case token searched anywhere in the UA, name for the log)
_PREVIEW_FETCHERS: tuple[tuple[str, str], ...] = (
    ("slackbot", "Slackbot"),
    ("slack-imgproxy", "Slack-ImgProxy"),
    ("telegrambot", "TelegramBot"),
    ("facebookexternalhit", "facebookexternalhit"),
    ("facebot", "Facebot"),
    ("meta-externalagent", "Meta-ExternalAgent"),
    ("twitterbot", "Twitterbot"),
    ("whatsapp/", "WhatsApp"),
    ("discordbot", "Discordbot"),
    ("linkedinbot", "LinkedInBot"),
    ("skypeuripreview", "SkypeUriPreview"),
    ("redditbot", "redditbot"),
    ("pinterestbot", "Pinterestbot"),
    ("embedly", "Embedly"),
    ("iframely", "Iframely"),
    ("vkshare", "vkShare"),
    ("snap url preview", "Snap URL Preview"),
    ("google-pagerenderer", "Google-PageRenderer"),
    ("linkpreview", "linkpreview"),
)

_HEADLESS: tuple[tuple[str, str], ...] = (
    ("headlesschrome", "HeadlessChrome"),
    ("phantomjs", "PhantomJS"),
    ("chrome-lighthouse", "Lighthouse"),
)

# Lower-case prefixes: these libraries put their name first; a browser never starts this way.
_HTTP_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("curl/", "curl"),
    ("wget/", "Wget"),
    ("python-requests/", "python-requests"),
    ("python-httpx/", "python-httpx"),
    ("python-urllib/", "Python-urllib"),
    ("python/", "Python"),
    ("aiohttp/", "aiohttp"),
    ("go-http-client/", "Go-http-client"),
    ("okhttp/", "okhttp"),
    ("java/", "Java"),
    ("apache-httpclient/", "Apache-HttpClient"),
    ("libwww-perl/", "libwww-perl"),
    ("axios/", "axios"),
    ("node-fetch", "node-fetch"),
    ("undici", "undici"),
    ("postmanruntime/", "PostmanRuntime"),
    ("httpie/", "HTTPie"),
)

_CRAWLERS: tuple[tuple[str, str], ...] = (
    ("googlebot", "Googlebot"),
    ("adsbot-google", "AdsBot-Google"),
    ("google-inspectiontool", "Google-InspectionTool"),
    ("bingbot", "bingbot"),
    ("baiduspider", "Baiduspider"),
    ("sogou web spider", "Sogou web spider"),
    ("sosospider", "Sosospider"),
    ("yisouspider", "YisouSpider"),
    ("360spider", "360Spider"),
    ("bytespider", "Bytespider"),
    ("petalbot", "PetalBot"),
    ("yandexbot", "YandexBot"),
    ("duckduckbot", "DuckDuckBot"),
    ("applebot", "Applebot"),
    ("ahrefsbot", "AhrefsBot"),
    ("semrushbot", "SemrushBot"),
    ("mj12bot", "MJ12bot"),
    ("gptbot", "GPTBot"),
    ("claudebot", "ClaudeBot"),
    ("ccbot", "CCBot"),
)

# "(compatible; Foobot/2.1; +http://…)", "Foobot/1.0", "MyCrawler", "some-spider": a robot naming
# itself. Not a bare "bot" anywhere (CUBOT phones, "Abbott" in an app name).
_SELF_DECLARED = re.compile(
    r"compatible;\s*[\w.-]*(?:bot|spider|crawler)\b"
    r"|\b[\w.-]*(?:bot|spider|crawler)/\d"
    r"|\+https?://",
    re.IGNORECASE,
)


def _header(headers: Mapping[str, str], name: str) -> str:
    """Case-insensitive header lookup that works on a plain dict as well as Starlette's Headers."""
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def _find(ua_lower: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for token, name in table:
        if token in ua_lower:
            return name
    return None


def classify(user_agent: str | None, headers: Mapping[str, str] | None = None,
             method: str = "GET") -> AgentVerdict:
    """The verdict for one request to ``/t/{code}``: its ``User-Agent``, the other request headers
    (only the prefetch hints are read) and the HTTP method."""
    headers = headers or {}
    ua = (user_agent or "").strip()
    if not ua:
        return AgentVerdict(AgentClass.BOT, AgentReason.EMPTY_UA)

    for name in ("purpose", "sec-purpose", "x-moz", "x-purpose"):
        value = _header(headers, name).strip().lower()
        # Sec-Purpose is a list: "prefetch", "prefetch;prerender", "prefetch;anonymous-client-ip".
        if value and value.split(";")[0].strip() in ("prefetch", "preview", "prerender"):
            return AgentVerdict(AgentClass.PREVIEW, AgentReason.PREFETCH_HEADER, f"{name}: {value}")

    if method.upper() == "HEAD":
        return AgentVerdict(AgentClass.BOT, AgentReason.HEAD_REQUEST, "HEAD")

    low = ua.lower()
    if fetcher := _find(low, _PREVIEW_FETCHERS):
        return AgentVerdict(AgentClass.PREVIEW, AgentReason.PREVIEW_FETCHER, fetcher)
    if headless := _find(low, _HEADLESS):
        return AgentVerdict(AgentClass.BOT, AgentReason.HEADLESS_BROWSER, headless)
    for prefix, library in _HTTP_LIBRARIES:
        if low.startswith(prefix):
            return AgentVerdict(AgentClass.BOT, AgentReason.HTTP_LIBRARY, library)
    if crawler := _find(low, _CRAWLERS):
        return AgentVerdict(AgentClass.BOT, AgentReason.CRAWLER, crawler)
    if "wxwork/" in low:
        return AgentVerdict(AgentClass.PERSON, AgentReason.WECOM, "wxwork")
    if "micromessenger/" in low:
        return AgentVerdict(AgentClass.PERSON, AgentReason.WECHAT, "MicroMessenger")
    if m := _SELF_DECLARED.search(ua):
        return AgentVerdict(AgentClass.BOT, AgentReason.SELF_DECLARED, m.group(0))
    return AgentVerdict(AgentClass.PERSON, AgentReason.BROWSER)
