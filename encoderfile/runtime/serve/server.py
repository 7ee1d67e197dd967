"""`serve`: HTTP (uvicorn) and gRPC in one process and one event loop over one Batcher.

SIGTERM or SIGINT: report not ready, stop accepting, finish what is in flight, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn

from encoderfile.errors import EncoderfileError
from encoderfile.runtime.artifact import Bundle
from encoderfile.runtime.serve import logs
from encoderfile.runtime.serve.guards import READ_TIMEOUT_S, timed_protocol
from encoderfile.runtime.serve.service import Limits, Service, read_api_keys

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

log = logging.getLogger("encoderfile.serve")
GRACE_S = 30.0  # longest wait for in-flight requests on shutdown


def open_routes() -> list[str]:
    """What answers without an API key (HTTP routes and gRPC services), for --help and docs."""
    from encoderfile.runtime.serve.http_app import OPEN_ROUTES

    http = [*sorted(OPEN_ROUTES), "/docs/assets/*"]
    return [*http, "gRPC grpc.health.v1.Health", "gRPC server reflection"]


@dataclass(frozen=True)
class ServeOptions:
    """What `serve` needs; the defaults are the command line's."""

    host: str = "127.0.0.1"
    port: int = 8080  # HTTP
    grpc_port: int = 50051
    no_http: bool = False
    no_grpc: bool = False
    mcp: bool = False  # also MCP (streamable HTTP) at /mcp on `port`
    api_key_file: str | None = None
    cors_origins: Sequence[str] = ()
    log_format: str = "text"  # one of logs.FORMATS
    shutdown_delay: float = 0.0  # seconds /ready answers 503 on SIGTERM before draining
    read_timeout: float = READ_TIMEOUT_S
    limits: Limits = field(default_factory=Limits)
    threads: int | None = None


def run(options: ServeOptions, bundle: Bundle) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    if options.no_http and options.no_grpc:
        raise EncoderfileError("--no-http and --no-grpc leave nothing to serve. Drop one.")
    if not 0 <= options.shutdown_delay <= 3600:
        raise EncoderfileError(
            f"--shutdown-delay={options.shutdown_delay} is out of range. Use 0 to 3600 seconds."
        )
    if not (options.no_http or options.no_grpc) and options.port == options.grpc_port:
        raise EncoderfileError(
            f"--port and --grpc-port are both {options.port}. Give HTTP and gRPC different ports."
        )
    logs.configure(options.log_format)
    keys = read_api_keys(options.api_key_file) if options.api_key_file else ()
    service = Service(bundle, options.limits, api_keys=keys)
    if options.mcp and options.no_http:
        raise EncoderfileError("--mcp serves over HTTP, which --no-http turns off. Drop one.")
    import uvloop  # libuv's event loop: less loop CPU per request than asyncio's

    return uvloop.run(
        _serve_with_mcp(options, service) if options.mcp else _serve(options, service)
    )


async def _serve_with_mcp(options: ServeOptions, service: Service) -> int:
    from encoderfile.runtime.serve.mcp import HttpTransport

    mcp = HttpTransport(service, options.host)
    async with mcp.running():
        return await _serve(options, service, mcp.routes)


async def _serve(
    options: ServeOptions, service: Service, extra_routes: Sequence[BaseRoute] = ()
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    grpc_server = health = http = http_task = None
    # Both ports are taken before either server starts: a busy port is one line, with no
    # server left running for the closing event loop to complain about.
    sock = None if options.no_http else _bind(options.host, options.port)
    try:
        if not options.no_grpc:
            from encoderfile.runtime.serve.grpc_service import create_server, set_serving

            _probe_grpc(options.host, options.grpc_port)
            grpc_server, health = create_server(service, _join(options.host, options.grpc_port))
            await set_serving(health, False)
            await grpc_server.start()
    except BaseException:
        if sock is not None:
            sock.close()
        if grpc_server is not None:
            await grpc_server.stop(0)
        raise
    if sock is not None:
        from encoderfile.runtime.serve.http_app import create_app

        config = uvicorn.Config(
            create_app(service, cors_origins=options.cors_origins, extra_routes=extra_routes),
            http=timed_protocol(options.read_timeout),  # httptools, with a read timeout
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=int(GRACE_S),
        )
        http = _Uvicorn(config)
        http_task = asyncio.create_task(http.serve(sockets=[sock]))

    try:
        await loop.run_in_executor(None, service.load, options.threads)
    except BaseException:
        await _shutdown(service, grpc_server, http, http_task, grace=0)
        raise
    gc.freeze()  # the model and libraries stay; later collections scan only per-request objects
    if health is not None:
        await set_serving(health, True)
    log.info(
        "serving %s dimension=%d dimensions=%s http=%s grpc=%s cold_start_ms=%.0f",
        service.manifest.name,
        service.manifest.dimension,
        ",".join(map(str, service.manifest.dimensions)),
        "off" if options.no_http else f"http://{_join(options.host, options.port)}",
        "off" if options.no_grpc else _join(options.host, options.grpc_port),
        (service.cold_start_s or 0) * 1000,
    )
    waiters = [asyncio.create_task(stop.wait())] + ([http_task] if http_task else [])
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if health is not None:
        await set_serving(health, False)
    if options.shutdown_delay > 0 and not _http_stopped(http_task):
        service.drain()
        log.info(
            "shutdown delay: /ready answers 503 for %.1f s; still serving", options.shutdown_delay
        )
        await asyncio.sleep(options.shutdown_delay)
    log.info(
        "draining: finishing %d in-flight inputs",
        service.batcher.inflight if service.batcher else 0,
    )
    await _shutdown(service, grpc_server, http, http_task, grace=GRACE_S)
    log.info("stopped")
    return 0


async def _shutdown(
    service: Service, grpc_server: Any, http: Any, http_task: Any, grace: float
) -> None:
    service.drain()
    if http is not None:
        http.should_exit = True
    stopping = [grpc_server.stop(grace)] if grpc_server is not None else []
    await asyncio.gather(*stopping, *([http_task] if http_task else []))
    await asyncio.get_running_loop().run_in_executor(None, service.close, grace)
    service.backlog.flush()  # the last requests' metrics and log lines


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server that leaves signals to _serve (it would re-raise SIGTERM on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise EncoderfileError(
            f"cannot bind HTTP to {_join(host, port)} ({e.strerror}). Pick a free --port, "
            "or another --host."
        ) from None
    return sock


def _probe_grpc(host: str, port: int) -> None:
    """Refuse a busy gRPC port in one line (gRPC's own bind failure also logs from its C core)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
    except OSError as e:
        raise EncoderfileError(
            f"cannot bind gRPC to {_join(host, port)} ({e.strerror}). Pick a free --grpc-port, "
            "or another --host."
        ) from None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_stopped(http_task: asyncio.Task[None] | None) -> bool:
    """True when uvicorn already stopped on its own (nothing left to keep serving)."""
    return http_task is not None and http_task.done()
