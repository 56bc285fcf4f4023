"""A local fake WeCom that speaks the real protocol (API + signed, encrypted callbacks).

    sandbox = Sandbox(corp_id, secret, callback_token=..., encoding_aes_key=..., callback_url=...)
    seed_demo(sandbox)                           # the demo store chain (demo_chain.DEMO_STORES)
    server = serve(sandbox, "127.0.0.1", 8899)   # server.api_base_url, server.stop()
    sandbox.scan_contact_way(config_id)          # a customer scans a 联系我 QR -> callback posted
    sandbox.oauth_code("zhangsan")               # an OAuth2 code for auth/getuserinfo (or GET /sandbox/oauth/authorize)
    sandbox.app_messages                         # what message/send delivered, one dict per member

A durable corp (same ids after a restart): ``Sandbox.from_settings(settings, state_file=path)``
or ``load_or_seed(sandbox, path)``; ``sandbox.demo`` is what the seed built.
"""

from scrm.sandbox.callbacks import CallbackPoster, Delivery
from scrm.sandbox.demo_chain import DEMO_STORES, DemoStore
from scrm.sandbox.persist import SandboxStateError, load_corp, load_or_seed
from scrm.sandbox.seed import seed_demo
from scrm.sandbox.server import SandboxServer, create_sandbox_app, serve
from scrm.sandbox.state import OAUTH_CODE_TTL, WELCOME_CODE_TTL, CorpState, SandboxError
from scrm.sandbox.users import ACTIONS, ActionError, ActionResult, Sandbox

__all__ = [
    "ACTIONS", "ActionError", "ActionResult", "CallbackPoster", "CorpState", "DEMO_STORES", "DemoStore", "Delivery",
    "OAUTH_CODE_TTL", "Sandbox", "SandboxError", "SandboxServer", "SandboxStateError", "WELCOME_CODE_TTL",
    "create_sandbox_app", "load_corp", "load_or_seed", "seed_demo", "serve",
]
