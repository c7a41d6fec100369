"""The page at `/` of `lga-export serve`: one self-contained HTML file, no build step.

Its style and script are inline, and the Content-Security-Policy sent with it allows exactly
those two blocks (by their SHA-256) and calls to this server: the page cannot load anything
from elsewhere, so it works offline, and a script injected into it would not run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources
from typing import Any

PAGE_ASSET = ("assets", "page", "index.html")


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    if not blocks:
        raise RuntimeError(f"the page has no inline <{tag}> block")
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


@functools.lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """(the page's bytes, its Content-Security-Policy)."""
    html = resources.files("lga_export").joinpath(*PAGE_ASSET).read_text(encoding="utf-8")
    policy = (f"default-src 'none'; script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
              "img-src data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), policy


def page_response() -> Any:
    from fastapi.responses import HTMLResponse

    body, policy = page()
    return HTMLResponse(body, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})
