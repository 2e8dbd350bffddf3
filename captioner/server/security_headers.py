"""Security headers on every response the app sends: pages, static files, JSON answers and errors.

Set once, as the outermost ASGI layer, so no route, static mount or error handler can forget them;
a response that sets one of these headers itself (the /docs page's own policy) keeps its value.
"""
from __future__ import annotations

import base64
import hashlib
import re

# The page loads only its own script, style and the photos the user picks (blob: previews).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

DEFAULT_HEADERS: dict[str, str] = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",  # a JSON answer or an upload echoed in an error is never sniffed as HTML
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Referrer-Policy": "no-referrer",
}

INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def inline_script_policy(html: bytes) -> str:
    """PAGE_POLICY for a page that also runs its own inline scripts, allowed by their SHA-256 hashes only.

    Swagger UI's page (/docs) starts itself with one inline script; a hash keeps every other inline
    script (an injected one) blocked, where 'unsafe-inline' would allow them all.
    """
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'" for script in INLINE_SCRIPT.findall(html))
    return PAGE_POLICY.replace("script-src 'self'", f"script-src 'self' {hashes}".rstrip())


class SecurityHeaders:
    """ASGI middleware: add each of `headers` that a response does not set itself."""

    def __init__(self, app, headers: dict[str, str] = DEFAULT_HEADERS):
        self.app = app
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_defaults(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [(name, value) for name, value in self.headers if name not in present]}
            await send(message)

        await self.app(scope, receive, send_with_defaults)
