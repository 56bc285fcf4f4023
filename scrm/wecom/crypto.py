"""WeCom callback crypto (WXBizMsgCrypt): SHA1 signature + AES-256-CBC, per reference §1.

wechatpy 1.8.18 supplies the AES cipher; the framing is checked here because wechatpy compares
signatures with ``!=`` and does not validate the padding range.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
import xml.etree.ElementTree as ET

from wechatpy.crypto.cryptography import WeChatCipher

from scrm.wecom.errors import CallbackError

# WXBizMsgCrypt error codes (official sample libs).
BAD_SIGNATURE = -40001
BAD_XML = -40002
BAD_AES_KEY = -40004
BAD_CORP_ID = -40005
BAD_DECRYPT = -40007


class SignatureError(CallbackError):
    code = BAD_SIGNATURE


class MalformedCallback(CallbackError):
    code = BAD_XML


class CorpMismatch(CallbackError):
    code = BAD_CORP_ID


class DecryptError(CallbackError):
    code = BAD_DECRYPT


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, str(timestamp), str(nonce), encrypted])).encode()).hexdigest()


def reject_dtd(xml_text: str | bytes) -> None:
    """WeCom never sends a DOCTYPE; refusing one up front rules out entity expansion attacks."""
    probe = xml_text[:4096] if isinstance(xml_text, str) else xml_text[:4096].decode("utf-8", "replace")
    if "<!DOCTYPE" in probe.upper() or "<!ENTITY" in probe.upper():
        raise MalformedCallback("XML with a DOCTYPE/ENTITY declaration is refused")


class CallbackCrypto:
    def __init__(self, token: str, encoding_aes_key: str, corp_id: str):
        if not token:
            raise ValueError("callback token is empty")
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CallbackError(f"EncodingAESKey is not valid base64: {exc}") from exc
        if len(encoding_aes_key) != 43 or len(key) != 32:
            raise CallbackError("EncodingAESKey must be 43 characters (a 32-byte key)")
        self.token = token
        self.corp_id = corp_id
        self._key = key

    # -- receiving -------------------------------------------------------------------------
    def check(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> None:
        expected = signature(self.token, timestamp, nonce, encrypted)
        if not hmac.compare_digest(expected.encode(), (msg_signature or "").lower().encode()):
            raise SignatureError("msg_signature does not match")

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """GET verification: returns the decrypted echostr to answer as plain text."""
        self.check(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def open_envelope(self, body: bytes | str, msg_signature: str, timestamp: str, nonce: str) -> str:
        """POST body -> plaintext XML. Signature first, so forged requests cost no AES work."""
        encrypted = parse_envelope(body)
        self.check(msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def decrypt(self, encrypted: str) -> str:
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError("Encrypt is not base64") from exc
        if not raw or len(raw) % 16:
            raise DecryptError("ciphertext length is not a multiple of the AES block")
        plain = WeChatCipher(self._key).decrypt(raw)
        pad = plain[-1]
        if not 1 <= pad <= 32 or len(plain) < 20 + pad:
            raise DecryptError("bad padding")
        plain = plain[:-pad]
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise DecryptError("declared length exceeds the message")
        msg, receive_id = plain[20 : 20 + length], plain[20 + length :]
        try:
            text = msg.decode("utf-8")
            receiver = receive_id.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError("plaintext is not UTF-8") from exc
        if not hmac.compare_digest(receiver.encode(), self.corp_id.encode()):
            raise CorpMismatch(f"message is for corp {receiver!r}, not ours")
        return text

    # -- sending (the sandbox plays WeCom with these) -----------------------------------------
    def encrypt(self, plaintext: str, receive_id: str | None = None) -> str:
        msg = plaintext.encode("utf-8")
        rid = (self.corp_id if receive_id is None else receive_id).encode("utf-8")
        body = os.urandom(16) + struct.pack(">I", len(msg)) + msg + rid
        pad = 32 - len(body) % 32
        body += bytes([pad]) * pad
        return base64.b64encode(WeChatCipher(self._key).encrypt(body)).decode("ascii")

    def seal(
        self, plaintext: str, *, timestamp: str | None = None, nonce: str | None = None, agent_id: int | None = None
    ) -> tuple[dict[str, str], str]:
        """Build a POST callback as WeCom does: (query params, XML body)."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or str(int.from_bytes(os.urandom(4), "big"))
        encrypted = self.encrypt(plaintext)
        agent = f"<AgentID><![CDATA[{agent_id}]]></AgentID>" if agent_id is not None else ""
        body = (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>{agent}"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        )
        params = {
            "msg_signature": signature(self.token, timestamp, nonce, encrypted),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        return params, body

    def sign_echo(self, echo_plain: str, *, timestamp: str, nonce: str) -> dict[str, str]:
        echostr = self.encrypt(echo_plain)
        return {
            "msg_signature": signature(self.token, timestamp, nonce, echostr),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        }


def parse_envelope(body: bytes | str) -> str:
    """The outer POST XML: returns the Encrypt text."""
    reject_dtd(body)
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise MalformedCallback(f"body is not XML: {exc}") from exc
    node = root.find("Encrypt")
    encrypt = (node.text or "").strip() if node is not None else ""
    if not encrypt:
        raise MalformedCallback("body has no <Encrypt> element")
    return encrypt
