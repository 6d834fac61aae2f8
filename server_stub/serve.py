"""Serving an app over HTTPS (or plain HTTP) with hypercorn's trio worker, reporting the URL.

This module owns the hypercorn configuration. ``serve`` binds (port 0 is allowed), then
reports the actual URL (``https://`` when given a certificate) through ``task_status`` so
that callers -- tests, the demo, the CLI that prints it on stdout -- learn the port the
kernel picked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette

from .tls import CertFiles

DEFAULT_BIND = "127.0.0.1:0"


def make_config(bind: str, tls: CertFiles | None = None) -> Config:
    config = Config()
    config.bind = [bind]
    if tls is not None:
        config.certfile = str(tls.cert)
        config.keyfile = str(tls.key)
    config.accesslog = None
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = 30.0
    return config


async def serve(
    app: Starlette,
    bind: str = DEFAULT_BIND,
    *,
    tls: CertFiles | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` ("HOST:PORT") until cancelled; reports "https://HOST:PORT"
    with ``tls`` (the certificate and key to serve with), else "http://HOST:PORT"."""
    config = make_config(bind, tls)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
        )
        task_status.started(urls[0])
