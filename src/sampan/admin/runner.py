"""Run the admin app with uvicorn inside the node's own event loop.

The node owns process signals and logging, so uvicorn's signal handlers, its logging
config and its access log are all off; the socket is bound here so a taken port is a
clear exception instead of uvicorn's ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["AdminServer", "AdminServerError"]


class AdminServerError(RuntimeError):
    """The admin server could not start (port taken, app startup failed, ...)."""


class _Server(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the node."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AdminServer:
    """The admin HTTP server as a task in the running loop: ``await start()``/``await stop()``."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        startup_timeout: float = 10.0,
        graceful_timeout: int = 5,
    ) -> None:
        self._app = app
        self.host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._startup_timeout = startup_timeout
        self._graceful_timeout = graceful_timeout
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the real one when asked for port 0)."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    async def start(self) -> None:
        """Bind, start serving, and return once uvicorn accepts connections."""
        if self._task is not None:
            raise AdminServerError("admin server already started")
        sock = self._bind()
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=self._graceful_timeout,
        )
        server = _Server(config)
        self._sock, self._server = sock, server
        self._bound_port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._serve(server, sock), name="sampan-admin-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        try:
            while not server.started:
                if self._task.done():
                    self._task.result()  # raises the startup error, if any
                    raise AdminServerError("admin server stopped during startup")
                if loop.time() > deadline:
                    raise AdminServerError(
                        f"admin server did not start within {self._startup_timeout} s"
                    )
                await asyncio.sleep(0.005)
        except BaseException:
            await self._abort()
            raise

    def _bind(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self.host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family = infos[0][0]
            # create_server sets SO_REUSEADDR (restart while old connections sit in TIME_WAIT)
            # but not SO_REUSEPORT, so a port held by another process is an error here.
            return socket.create_server((self.host, self._requested_port), family=family)
        except OSError as exc:
            raise AdminServerError(
                f"cannot listen on {self.host}:{self._requested_port} for the admin server: "
                f"{exc.strerror or exc} — is another node or program using that port? "
                "Set a different admin port in the config (0 picks a free one)."
            ) from exc

    @staticmethod
    async def _serve(server: _Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits on lifespan startup failure
            raise AdminServerError(f"admin app failed to start (uvicorn exit {exc.code})") from None

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the graceful timeout), close."""
        task, server = self._task, self._server
        if task is None or server is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self._graceful_timeout + 2.0)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._cleanup()

    async def _abort(self) -> None:
        task, server = self._task, self._server
        if task is not None and server is not None and not task.done():
            server.should_exit = True
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._server = self._task = None
