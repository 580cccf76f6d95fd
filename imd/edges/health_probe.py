"""A native gRPC health check of a child's first port.

The Go original forks ``grpc_health_probe`` every 100 ms per starting
process; at a thousand creates that is a thousand forks a second. Here a
probe is one HTTP/2 request on the event loop.
"""

from __future__ import annotations

import asyncio

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse


async def probe_once(host: str, port: int, timeout: float) -> bool:
    """True if ``grpc.health.v1.Health/Check`` with service "" says SERVING."""
    channel = Channel(host, port)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=timeout)
        return bool(reply.status == HealthCheckResponse.SERVING)
    except (TimeoutError, OSError, Exception):
        return False
    finally:
        channel.close()


async def wait_until_serving(host: str, port: int, interval: float) -> None:
    """Probe until SERVING. Runs until cancelled: the caller owns the deadline,
    so that a delete or a timeout can end it the same way (cancellation)."""
    while True:
        if await probe_once(host, port, timeout=max(interval, 1.0)):
            return
        await asyncio.sleep(interval)
