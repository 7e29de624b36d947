"""A node: one process assembled from a config, with one start/stop lifecycle for every layer.

Start order is bus → admin → consumers → tasks; stop runs the reverse so that nothing is
still producing into a closed bus: tasks are cancelled, consumers stop taking work and
finish or release their leases, the admin server stops, and the database closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from sampan.admin.runner import AdminServer
from sampan.admin.server import create_admin_app
from sampan.bus.base import Bus, Delivery, Handler, Retention
from sampan.bus.consumer import Consumer, ConsumerOptions
from sampan.bus.factory import open_bus
from sampan.bus.sqlite import SqliteBusOptions
from sampan.config import ConfigError, RetentionConfig, SampanConfig, load_config
from sampan.flows.service import FlowService
from sampan.gateway.service import GatewayService
from sampan.gc_threshold import GcYoungThreshold
from sampan.mesh.mesh import Mesh
from sampan.observe.metrics import Metrics
from sampan.python_target import load_target
from sampan.store.base import StateStore
from sampan.store.factory import open_store
from sampan.switch_interval import SwitchInterval

log = logging.getLogger("sampan.node")


@dataclass
class TaskContext:
    """What a user task or handler gets from the node it runs in."""

    bus: Bus
    metrics: Metrics
    options: dict[str, Any]
    stopping: asyncio.Event
    node_name: str
    admin_url: str | None = None
    gateway_url: str | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sampan.task"))


def retention_of(config: RetentionConfig | None) -> Retention | None:
    if config is None:
        return None
    return Retention(max_age_seconds=config.max_age, max_bytes=config.max_bytes)


class Node:
    """``worker`` > 0 makes a gateway-only process of a multi-worker node: it shares the
    listener (SO_REUSEPORT) and the bus, while worker 0 alone runs consumers and tasks."""

    def __init__(
        self,
        config: SampanConfig,
        *,
        admin_port: int | None = None,
        gateway_port: int | None = None,
        config_path: Path | None = None,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.worker = worker
        self.workers = workers
        self._gateway_port = gateway_port
        self.gateway: GatewayService | None = None
        self.metrics = Metrics()
        self.mesh: Mesh | None = (
            Mesh(config.mesh, config.services, self.metrics)
            if config.services or config.mesh.identity is not None
            else None
        )
        bus_config = config.bus
        data_dir = Path(config.node.data_dir)
        self.bus_url = bus_config.resolved_url(data_dir)
        self.bus = open_bus(
            self.bus_url,
            SqliteBusOptions(
                durability=bus_config.durability,
                auto_create_topics=bus_config.auto_create_topics,
                default_retention=retention_of(bus_config.retention) or Retention(),
                max_in_flight_per_group=bus_config.max_in_flight_per_group,
                poll_interval=bus_config.poll_interval,
            ),
            self.metrics,
            lease=bus_config.lease,
        )
        self.store: StateStore | None = (
            open_store(config.store.url, data_dir) if config.flows else None
        )
        self.flows: FlowService | None = None
        self.stopping = asyncio.Event()
        self.consumers: list[Consumer] = []
        self.admin: AdminServer | None = None
        base_port = config.node.admin.port if admin_port is None else admin_port
        self._admin_port = base_port + worker if base_port else 0
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._lag: dict[tuple[str, str], float] = {}
        self._started = False
        self._switch_interval = SwitchInterval(config.node.gil_switch_interval)
        self._gc_threshold = GcYoungThreshold(config.node.gc_young_threshold)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        for entry in config.node.python_path:
            if str(entry) not in sys.path:
                sys.path.insert(0, str(entry))
        await asyncio.to_thread(Path(config.node.data_dir).mkdir, parents=True, exist_ok=True)
        self._switch_interval.apply()
        self._gc_threshold.apply()
        await self.bus.start()
        self._started = True
        for topic in config.bus.topics:
            await self.bus.create_topic(topic.name, retention=retention_of(topic.retention))
        if config.node.admin.enabled:
            app = create_admin_app(
                self.metrics, extra_routes=self._admin_routes(), health=self._health
            )
            self.admin = AdminServer(app, host=config.node.admin.host, port=self._admin_port)
            await self.admin.start()
        if self.mesh is not None:
            await self.mesh.start()
        if config.routes and config.gateway.enabled:
            self.gateway = GatewayService(
                config, self.metrics, self.bus, mesh=self.mesh, reuse_port=self.workers > 1
            )
            await self.gateway.start(self._gateway_port)
        if self.worker > 0:
            log.info("worker %d/%d up (gateway only)", self.worker, self.workers)
            return
        for sub in config.subscriptions:
            retry = (sub.retry or config.bus.retry).policy()
            consumer = Consumer(
                self.bus,
                sub.topic,
                sub.group,
                self._handler(sub.handler),
                ConsumerOptions(
                    concurrency=sub.concurrency,
                    batch=config.bus.fetch_batch,
                    lease_seconds=config.bus.lease,
                    retry=retry,
                    start=sub.start,
                ),
                self.metrics,
            )
            await consumer.start()
            self.consumers.append(consumer)
        if config.flows:
            assert self.store is not None
            await self.store.start()
            self.flows = FlowService(
                config.flows,
                bus=self.bus,
                store=self.store,
                metrics=self.metrics,
                base_dir=self.config_path.parent if self.config_path else Path.cwd(),
                data_dir=Path(config.node.data_dir),
                node=config.node.name,
                default_retry=config.bus.retry,
                routes=config.routes,
                mesh=self.mesh,
                fetch_batch=config.bus.fetch_batch,
                lease_seconds=config.bus.lease,
            )
            await self.flows.start()
        for task in config.tasks:
            run = load_target(task.run)
            ctx = self._context(dict(task.options))
            self._tasks.append(asyncio.create_task(self._run_task(task.run, run, ctx)))
        self._maintenance = asyncio.create_task(self._maintain())
        log.info(
            "node %s up: bus %s, admin %s, %d consumer(s), %d task(s), %d flow(s)",  # tests parse
            config.node.name,
            self.bus_url,
            self.admin_url or "off",
            len(self.consumers),
            len(self._tasks),
            len(self.flows.flows) if self.flows is not None else 0,
        )

    async def stop(self) -> None:
        self.stopping.set()
        grace = self.config.node.shutdown_grace
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.gateway is not None:
            await self.gateway.stop()  # drain HTTP first: it publishes into the bus
        await asyncio.gather(
            *(c.stop(grace) for c in self.consumers),
            *([self.flows.stop(grace)] if self.flows is not None else []),
            return_exceptions=True,
        )
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self.mesh is not None:
            await self.mesh.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.store is not None and self.flows is not None:
            await self.store.close()
        if self._started:
            await self.bus.close()
        self._switch_interval.restore()
        self._gc_threshold.restore()
        log.info("node %s stopped", self.config.node.name)

    async def run(self, run_for: float | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``run_for`` seconds), then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        try:
            await self.start()
            # What start-up loaded lives as long as the node: keep it out of every later
            # collection (gen-2 passes over it paused the loop 10-12 ms at 10k msg/s).
            gc.collect()
            gc.freeze()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(run_for):
                    await self.stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- hot reload ---------------------------------------------------------------------------

    def _reload_in_background(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file and swap the gateway's routes; a broken config is refused
        with its errors and the running routes keep serving."""
        if self.config_path is None or self.gateway is None:
            return False, ["this node has no config file or no gateway to reload"]
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            errors = [issue.format() for issue in exc.issues]
            log.error("reload refused, keeping the running routes:\n%s", "\n".join(errors))
            return False, errors
        try:
            count = await self.gateway.reload(config)
        except Exception as exc:
            log.error("reload refused, keeping the running routes: %s", exc)
            return False, [str(exc)]
        self.config = config
        return True, [f"{count} route(s) loaded"]

    @property
    def gateway_url(self) -> str | None:
        if self.gateway is None:
            return None
        return f"http://{self.config.gateway.listen.host}:{self.gateway.port}"

    @property
    def admin_url(self) -> str | None:
        if self.admin is None:
            return None
        return f"http://{self.config.node.admin.host}:{self.admin.port}"

    # -- user code ----------------------------------------------------------------------------

    def _context(self, options: dict[str, Any]) -> TaskContext:
        return TaskContext(
            self.bus,
            self.metrics,
            options,
            self.stopping,
            self.config.node.name,
            self.admin_url,
            self.gateway_url,
        )

    def _handler(self, dotted: str) -> Handler:
        target = load_target(dotted)
        arity = len(inspect.signature(target).parameters)
        if arity == 1:
            return target  # type: ignore[no-any-return]
        ctx = self._context({})

        async def with_context(delivery: Delivery) -> None:
            await target(delivery, ctx)

        return with_context

    async def _run_task(
        self, name: str, run: Callable[[TaskContext], Awaitable[None]], ctx: TaskContext
    ) -> None:
        try:
            await run(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s failed", name)

    # -- housekeeping -------------------------------------------------------------------------

    async def _maintain(self) -> None:
        purged_at = time.monotonic()
        while True:
            try:
                removed = await self.bus.enforce_retention()
                if removed:
                    log.info("retention removed %d message(s)", removed)
                await self._refresh_lag()
                if (
                    self.store is not None
                    and time.monotonic() - purged_at >= self.config.store.purge_interval
                ):
                    purged_at = time.monotonic()
                    await self.store.purge_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus maintenance failed")
            await asyncio.sleep(self.config.bus.maintenance_interval)

    async def _refresh_lag(self) -> None:
        for topic in await self.bus.topics():
            for info in await self.bus.groups(topic.name):
                key = (info.topic, info.group)
                if key not in self._lag:
                    self.metrics.gauge(
                        "sampan_bus_lag",
                        "Messages a group has not acked yet.",
                        lambda key=key: self._lag.get(key, 0.0),  # type: ignore[misc]
                        topic=info.topic,
                        group=info.group,
                    )
                self._lag[key] = float(info.lag)

    # -- admin API ----------------------------------------------------------------------------

    async def _health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping.is_set() else "ok",
            "node": self.config.node.name,
            "bus": self.bus_url,
        }

    def _admin_routes(self) -> list[BaseRoute]:
        async def topics(request: Request) -> JSONResponse:
            result = []
            for t in await self.bus.topics():
                groups = await self.bus.groups(t.name)
                result.append(
                    {
                        "name": t.name,
                        "messages": t.messages,
                        "bytes": t.bytes,
                        "first_offset": t.first_offset,
                        "next_offset": t.next_offset,
                        "groups": [
                            {"group": g.group, "lag": g.lag, "in_flight": g.in_flight}
                            for g in groups
                        ],
                    }
                )
            return JSONResponse(result)

        async def reload(request: Request) -> JSONResponse:
            ok, messages = await self.reload()
            if ok:
                return JSONResponse({"status": "reloaded", "detail": messages})
            return JSONResponse(
                {
                    "type": "about:blank",
                    "title": "Reload refused",
                    "status": 422,
                    "detail": "the running routes keep serving",
                    "errors": messages,
                },
                status_code=422,
                media_type="application/problem+json",
            )

        routes: list[BaseRoute] = [
            Route("/api/topics", topics),
            Route("/api/reload", reload, methods=["POST"]),
        ]
        if self.mesh is not None:
            routes.extend(self.mesh.admin_routes())
        return routes
