"""Optional API keys: `Authorization: Bearer <key>` on every route but /health, /ready and the image links.

Image links (`response_format="url"`) are capabilities, like OpenAI's pre-signed ones: their ids carry 144 random
bits and expire, and apps hand them to browsers and `<img src>`, which send no key.

Keys are kept only as sha256 digests (config.key_hashes reads them) and compared in constant time against every
configured digest, so neither the keys nor, through timing, their prefixes leak.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from localimg import request_context
from localimg.api.errors import error_response
from localimg.api.images import FILES_PATH
from localimg.errors import AuthenticationError

OPEN_PATHS = frozenset({"/health", "/ready"})
OPEN_PREFIXES = (f"/v1{FILES_PATH}/", f"{FILES_PATH}/")  # the image links, with and without the /v1 prefix


class ApiKeyMiddleware:
    """Answers 401 `invalid_api_key` (OpenAI's envelope) unless the request carries an accepted key."""

    def __init__(self, app: ASGIApp, hashes: tuple[str, ...]) -> None:
        self.app = app
        self._hashes = tuple(bytes.fromhex(h) for h in hashes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = _bearer(scope)
        digest = hashlib.sha256(key.encode()).digest() if key else None
        if digest is None or not self._accepted(digest):
            shown = f": {key[:3]}...{key[-4:]}" if key and len(key) > 8 else ""
            message = (
                f"Incorrect API key provided{shown}. Pass one of this server's keys as `Authorization: Bearer <key>`."
                if key
                else "You didn't provide an API key. Pass it as `Authorization: Bearer <key>`."
            )
            error = AuthenticationError(message, code="invalid_api_key")
            request_id = scope.get("state", {}).get("request_id")
            await error_response(error, request_id, headers={"www-authenticate": "Bearer"})(scope, receive, send)
            return
        request_context.client_id.set(f"key:{digest.hex()[:12]}")
        await self.app(scope, receive, send)

    def _accepted(self, digest: bytes) -> bool:
        # No early exit: the time taken does not depend on which (if any) key matched.
        matched = False
        for accepted in self._hashes:
            matched |= hmac.compare_digest(digest, accepted)
        return matched


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
