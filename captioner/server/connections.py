"""What uvicorn does not bound: how long a connection may take to send a request's headers, and how
many connections may be open at once.

uvicorn (read in 0.55, h11 and httptools alike) starts no timer on a new connection, and its
keep-alive timer, started after a response, is cancelled by any byte received: a client that
connects and sends nothing, or drips its headers a byte at a time, holds the connection, one open
file, for ever. `GuardedH11Protocol` gives every request a deadline for its headers, counted from
the moment the connection is waiting for one (opened, or done with the previous answer) and not
extended by the bytes that arrive; and, past `max_connections`, closes the connection idle the
longest to make room (or the new one, when every other is busy with a request). Once the headers
are in, the app's own upload timeouts take over.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("captioner.server")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on open connections; see the module."""

    header_timeout: float = 15.0
    max_connections: int = 1000
    idle: dict[GuardedH11Protocol, None]  # connections waiting for a request's headers, longest-waiting first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._close_the_longest_idle():
            logger.warning("%d connections open, all busy; refusing a new one", len(self.connections) - 1)
            transport.close()
            return
        self._wait_for_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_in_flight():
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        self._stop_waiting()
        if not self._request_in_flight() and not self.transport.is_closing():
            self._wait_for_headers()  # a new deadline for the next request; bytes of the last one's unread body do not extend it

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _request_in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _wait_for_headers(self) -> None:
        self.idle[self] = None
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_waiting(self) -> None:
        self.idle.pop(self, None)
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        self._close()

    def _close(self) -> None:
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.close()  # connection_lost follows and tidies up the h11 state

    def _close_the_longest_idle(self) -> bool:
        if not self.idle:
            return False
        next(iter(self.idle))._close()
        return True


def guarded_h11_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol class for one server, with its own limits and its own registry of idle connections."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout, "max_connections": max_connections, "idle": {}})


def uvicorn_config(app: Any, host: str, port: int, header_timeout: float, max_connections: int, **options: Any) -> uvicorn.Config:
    """uvicorn's Config for `app`, served over GuardedH11Protocol; `options` go to uvicorn.Config as they are.

    WebSocket upgrades are off: the app has none, and an upgraded connection would leave GuardedH11Protocol.
    """
    return uvicorn.Config(app, host=host, port=port, http=guarded_h11_protocol(header_timeout, max_connections), ws="none", **options)
