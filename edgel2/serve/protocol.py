"""The HTTP/1.1 connection, guarded: uvicorn's httptools protocol with bounds on what one
client may make the server hold.

uvicorn bounds neither the size nor the number of a request's header lines when it parses
with httptools (h11 has a 16 KiB limit, at half the speed), and it times out only idle
keep-alive connections, not one that sends half a request and waits. So, per connection:

- the request line and headers together at most :data:`MAX_HEADER_BYTES`, in at most
  :data:`MAX_HEADERS` lines, else ``431`` and the connection is closed (nginx allows 8 KiB a
  line and 32 KiB in all by default; Node 16 KiB);
- a request that has begun must keep coming: ``client_timeout_s`` (default
  :data:`CLIENT_TIMEOUT_S`) with no byte while a request is incomplete (a half-sent header, a
  body shorter than its Content-Length, a connection that never sends anything) closes the
  connection;
- the headers must be complete within 3 x ``client_timeout_s`` of the request's first byte
  however slowly they trickle in (slowloris).

Examples:
    >>> uvicorn.run(app, http=GuardedHttpToolsProtocol)   # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
CLIENT_TIMEOUT_S = 10.0


class _HeaderTooLarge(Exception):
    pass


class _QuietRefusals(logging.Filter):
    """Drops the warning uvicorn logs when the parser stops on edgel2's header limit (it cannot
    tell that from a malformed request): the 431 is the answer, not a server problem. The
    event loop runs the refusal, uvicorn's warning and the 431 in one call, so one flag is
    enough."""

    refusing = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_QuietRefusals.refusing
                    and record.getMessage() == "Invalid HTTP request received.")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with header bounds and timeouts for incomplete requests."""

    # a class attribute: uvicorn makes the protocol itself, in each worker process
    client_timeout_s = CLIENT_TIMEOUT_S

    @classmethod
    def configure(cls, client_timeout_s: float) -> None:
        """Set the timeout for every connection of this process (``edgel2 serve``'s
        ``--client-timeout-s``; each worker process sets it from its config)."""
        cls.client_timeout_s = float(client_timeout_s)
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietRefusals) for f in logger.filters):
            logger.addFilter(_QuietRefusals())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_bytes = self._header_lines = 0
        # bytes received since the headers began: httptools buffers a header line until it
        # ends, so a 32 MB line is refused on the way in, not once it is whole
        self._in_headers, self._received_in_headers = True, 0
        self._refused = False
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._incomplete = True  # from the first byte of a request to its last

    # --- timeouts ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_idle()  # a connection that never sends anything is incomplete too

    def connection_lost(self, exc) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_headers:
            self._received_in_headers += len(data)
        super().data_received(data)
        if self._in_headers and self._received_in_headers > MAX_HEADER_BYTES + 8192:
            self._refuse_headers()  # 8 KiB: the request line and a body's first bytes
        elif self._incomplete and not self.transport.is_closing():
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.client_timeout_s, self._time_out)

    def _cancel_timers(self) -> None:
        for timer in (self._idle, self._deadline):
            if timer is not None:
                timer.cancel()
        self._idle = self._deadline = None

    def _time_out(self) -> None:
        if self._incomplete and not self.transport.is_closing():
            self.transport.close()  # a handler still reading the body sees a disconnect

    # --- the parser's callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_lines = 0
        self._incomplete = True
        self._deadline = self.loop.call_later(3 * self.client_timeout_s, self._time_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers, self._received_in_headers = False, 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._incomplete = False
        self._cancel_timers()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._incomplete = True  # the next request (or uvicorn's keep-alive timeout) decides
        self._in_headers = True
        super().on_response_complete()

    def _count(self, size: int, lines: int) -> None:
        self._header_bytes += size
        self._header_lines += lines
        if self._headers_over_limit():
            _QuietRefusals.refusing = True
            raise _HeaderTooLarge()  # httptools stops parsing; send_400_response answers

    def _headers_over_limit(self) -> bool:
        return self._header_bytes > MAX_HEADER_BYTES or self._header_lines > MAX_HEADERS

    def send_400_response(self, msg: str) -> None:
        _QuietRefusals.refusing = False
        if self._headers_over_limit():
            self._refuse_headers()
            return
        super().send_400_response(msg)

    def _refuse_headers(self) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_timers()
        body = (f'{{"error": "request headers over the limit of {MAX_HEADER_BYTES // 1024} '
                f'KiB or {MAX_HEADERS} lines"}}').encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n"
                             b"connection: close\r\n\r\n" + body)
        self.transport.close()
