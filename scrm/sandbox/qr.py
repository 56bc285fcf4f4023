"""QR code images for the sandbox's ``qr_code`` URLs: real WeCom answers an image URL, and scrm's
pages put it in an ``<img>``, so the sandbox serves a PNG (segno, no Pillow) of the scan page's URL."""

from __future__ import annotations

import io
from functools import lru_cache

import segno

TARGET_PX = 360  # about what WeCom's QR images measure
BORDER = 4  # modules of quiet zone, as the QR standard asks


def qr_scale(content: str) -> int:
    """Pixels per module that make the image about ``TARGET_PX`` wide (at least 2)."""
    modules, _ = segno.make(content, error="m", micro=False).symbol_size(scale=1, border=BORDER)
    return max(2, round(TARGET_PX / modules))


@lru_cache(maxsize=2048)
def qr_png(content: str) -> bytes:
    """A PNG of a QR code holding ``content``; cached (one entry per config id and base URL)."""
    qr = segno.make(content, error="m", micro=False)
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=qr_scale(content), border=BORDER)
    return buf.getvalue()
