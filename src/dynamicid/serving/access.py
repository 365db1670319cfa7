"""Who may act on the server, and where its files live.

Gradio checks the login on the routes that start runs or read files, but leaves some that act on runs open
(`/gradio_api/cancel`, `/gradio_api/reset`, the stream routes), so under `--auth` a stranger could stop
anyone's run. `LoginRequired` asks for the login on every POST under /gradio_api. The server's files
(uploads, results) go to a cache folder of its own, readable by its user only and removed when it stops."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

API_PREFIX = "/gradio_api/"


def _logged_in(scope: dict, gradio_app: Any) -> bool:
    from starlette.requests import Request

    cookies = Request(scope).cookies
    cookie_id = getattr(gradio_app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return token is not None and token in getattr(gradio_app, "tokens", {})


class LoginRequired:
    """ASGI middleware: under auth, a POST under /gradio_api without a logged-in user gets 401."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        gradio_app = scope.get("app")
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").startswith(API_PREFIX)
            and getattr(gradio_app, "auth", None) is not None
            and not _logged_in(scope, gradio_app)
        ):
            from starlette.responses import JSONResponse

            response = JSONResponse({"detail": "Not authenticated: log in first (serve runs with --auth)"}, 401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class PrivateCache:
    """A fresh folder (mode 0700) for Gradio's uploads and results and the engine's images. Gradio is told
    through GRADIO_TEMP_DIR, so make one before Gradio is imported; `close()` removes it."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="dynamicid-serve-")
        os.environ["GRADIO_TEMP_DIR"] = self.folder
        self.results = os.path.join(self.folder, "results")
        os.makedirs(self.results, mode=0o700)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
