"""Runs the server's app under uvicorn on a socket the caller bound, with bounded connections.

    host.serve(server, sock)                     # blocks; SIGTERM / SIGINT stop it (exit status 0)
    thread = host.start_background(server, sock) # the same on a thread (embedding, tests); server.stop() ends it

Connections cost a file descriptor each, whatever they send, so each is bounded here (uvicorn's h11 protocol
with a deadline of our own; uvicorn alone waits forever for a request that never finishes):
- a request's head (and, once answered, the next request) must arrive within `read_timeout_s`, else the
  connection is closed; the body's own deadline is the guard's (a 408 in OpenAI's shape);
- the kernel queues up to LISTEN_BACKLOG connections (a flood does not drop a /health SYN, which would cost a
  client a 1 s retransmit) while asyncio accepts ACCEPT_BACKLOG per loop turn;
- at most `limits.max_connections` are open (fewer when `ulimit -n` leaves less room: FD_RESERVE stays free
  for the accept batches and the process's files): a new one closes the oldest connection that is waiting for
  a request (idle keep-alive or a head half-sent), else the oldest whose body is still arriving, so a flood of
  half-open connections cannot lock out /health; with every connection busy being answered, the new one is
  closed. uvicorn's `limit_concurrency` bounds requests in flight too;
- request heads are bounded by h11's incomplete-event size (MAX_HEADER_BYTES); idle keep-alive connections
  close after `keep_alive_s`;
- running out of file descriptors anyway (other processes, a low `ulimit -n`) is said once in the log, not
  once per refused accept.

Not here: the routes (app.py), the per-request checks (guard.py), the parts (server.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
from collections import OrderedDict

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from crome_runtime.limits import ACCEPT_BACKLOG, FD_RESERVE, LISTEN_BACKLOG, MAX_HEADER_BYTES
from crome_runtime.serve.app import create_app
from crome_runtime.serve.server import Server

log = logging.getLogger("crome_runtime.serve")

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def bounded_protocol(max_connections: int, read_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a read deadline per request and a cap on open connections."""
    live: set["BoundedH11"] = set()  # open and not being closed; of those, oldest first:
    idle: OrderedDict[int, "BoundedH11"] = OrderedDict()  # waiting for a request (or the rest of its head)
    sending: OrderedDict[int, "BoundedH11"] = OrderedDict()  # a request whose body is still arriving

    class BoundedH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(live) >= max_connections:
                oldest = next(iter(idle.values()), None) or next(iter(sending.values()), None)
                if oldest is None:  # every connection has a request being answered: this one is refused
                    transport.close()
                    return
                oldest._close()
            live.add(self)
            self._wait_for_request()

        def connection_lost(self, exc: Exception | None) -> None:
            self._untrack()
            live.discard(self)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._request_arrived()  # its body and its answer have deadlines of their own (guard.py)
                if self.conn.their_state is h11.SEND_BODY:
                    sending.setdefault(id(self), self)
                else:
                    sending.pop(id(self), None)

        def on_response_complete(self) -> None:
            # the next request (or the rest of a body answered early, by an error) has its deadline from now;
            # a pipelined request that is already here disarms it again (handle_events)
            self._wait_for_request()
            super().on_response_complete()

        def _wait_for_request(self) -> None:
            self._untrack()
            idle[id(self)] = self
            self._deadline = self.loop.call_later(read_timeout_s, self._close)

        def _request_arrived(self) -> None:
            idle.pop(id(self), None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _untrack(self) -> None:
            self._request_arrived()
            sending.pop(id(self), None)

        def _close(self) -> None:
            self._untrack()
            live.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedH11


def connection_cap(wanted: int) -> int:
    """`wanted`, or less when this process may not open that many files besides FD_RESERVE (at least 16)."""
    try:
        import resource
    except ImportError:  # Windows: no rlimits to read
        return wanted
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return wanted if soft == resource.RLIM_INFINITY else max(16, min(wanted, soft - FD_RESERVE))


def uvicorn_server(server: Server, log_level: str = "warning") -> uvicorn.Server:
    config = server.config

    class _Uvicorn(uvicorn.Server):
        said_out_of_descriptors = False

        async def serve(self, sockets=None) -> None:
            asyncio.get_running_loop().set_exception_handler(self.loop_error)
            await super().serve(sockets)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)  # asyncio listens with its accept batch, ACCEPT_BACKLOG: queue more
            for sock in sockets or []:
                sock.listen(LISTEN_BACKLOG)

        def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
            error = context.get("exception")
            if isinstance(error, OSError) and error.errno in OUT_OF_DESCRIPTORS:  # asyncio's accept(), retried in 1 s
                if not self.said_out_of_descriptors:
                    self.said_out_of_descriptors = True
                    log.error("out of file descriptors (%s): new connections wait until some close; raise "
                              "`ulimit -n` or lower the connections this server keeps (said once)",
                              error.strerror or error)
                return
            loop.default_exception_handler(context)

        def handle_exit(self, sig, frame):  # SIGTERM / SIGINT: uvicorn's own first, then our parts
            # in this order: begin_shutdown sets should_exit, which uvicorn takes for an earlier signal and
            # makes a first SIGINT a forced exit (lifespan cancelled, a traceback); a second one still forces
            super().handle_exit(sig, frame)
            server.begin_shutdown()

        @contextlib.contextmanager
        def capture_signals(self):
            """uvicorn's, without re-raising the signal at the end: a clean stop exits with status 0."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    limits = config.limits
    uv_config = uvicorn.Config(create_app(server), log_level=log_level, access_log=False, lifespan="on",
                               http=bounded_protocol(connection_cap(limits.max_connections), config.read_timeout_s),
                               backlog=ACCEPT_BACKLOG,
                               # requests in flight; twice the connections, as closed ones count until they are gone
                               limit_concurrency=2 * limits.max_connections, timeout_keep_alive=config.keep_alive_s,
                               h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                               timeout_graceful_shutdown=max(1, round(config.shutdown_timeout_s)))
    uv = _Uvicorn(uv_config)
    server.on_stop.append(lambda: setattr(uv, "should_exit", True))
    return uv


def serve(server: Server, sock: socket.socket, log_level: str = "warning") -> None:
    """Blocks until stopped (a signal when on the main thread, or server.stop())."""
    uvicorn_server(server, log_level).run(sockets=[sock])


def start_background(server: Server, sock: socket.socket, log_level: str = "warning") -> threading.Thread:
    uv = uvicorn_server(server, log_level)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, name="crome-http", daemon=True)
    thread.start()
    return thread
