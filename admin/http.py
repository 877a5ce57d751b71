"""The service's HTTP server: one FastAPI app, served by uvicorn in a thread of ``serve``.

Routers plug into the app: the DICOMweb STOW-RS endpoint (``scp.dicomweb``) now, the admin
web report later, so every HTTP feature shares one port (``[admin] host, port``) and one
lifecycle. The server runs in its own thread with its own event loop; ``stop`` asks it to
finish the requests in flight and waits for it.

Proxy headers (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from the
configured ``trusted_proxies``; by default from nobody, so the client address that STOW-RS
allow-lists, login throttling and the audit trail see is the socket's peer. (uvicorn's own
default trusts them from 127.0.0.1, which would let any local process claim any address.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import uvicorn
from fastapi import APIRouter, FastAPI

log = logging.getLogger(__name__)


def create_app(routers: Sequence[APIRouter] = (), title: str = "TamperScan") -> FastAPI:
    """The app with the given routers; later features add theirs with ``include_router``."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for router in routers:
        app.include_router(router)
    return app


class HttpServer:
    """uvicorn in a background thread, with a bound port to read and a clean stop."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        graceful_s: float = 10.0,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # our logging setup applies
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(graceful_s),
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.host = host

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        servers = getattr(self._server, "servers", [])
        if not servers or not servers[0].sockets:
            raise RuntimeError("HTTP server not started")
        return int(servers[0].sockets[0].getsockname()[1])

    def start(self, timeout_s: float = 15.0) -> None:
        """Start serving; raises if the server could not bind (port taken, bad host)."""
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"HTTP server could not start on {self.host}:{self._server.config.port}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not start in time")
            time.sleep(0.02)
        log.info("HTTP server listening", extra={"host": self.host, "port": self.port})

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._thread = None
        log.info("HTTP server stopped")
