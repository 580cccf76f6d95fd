"""``imd``: run the daemon, or talk to one.

Client commands exit 0 on success and 1 on a gRPC error, printing the
status code and message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from imd.api.gen.imrpc import imrpc_grpc, instance_grpc
from imd.api.gen.imrpc import imrpc_pb2 as pm
from imd.api.gen.imrpc import instance_pb2 as inst
from imd.cli.backing_images import add_commands as add_backing_image_commands
from imd.cli.backup import add_commands as add_backup_commands
from imd.cli.client import open_channel
from imd.cli.output import emit, process_row, stream_lines
from imd.cli.status import status
from imd.cli.v2 import add_commands as add_v2_commands

Command = Callable[[argparse.Namespace, Channel], Awaitable[None]]


def _pm(ch: Channel) -> imrpc_grpc.ProcessManagerServiceStub:
    return imrpc_grpc.ProcessManagerServiceStub(ch)


def _inst(ch: Channel) -> instance_grpc.InstanceServiceStub:
    return instance_grpc.InstanceServiceStub(ch)


def _spec(a: argparse.Namespace) -> pm.ProcessSpec:
    return pm.ProcessSpec(name=a.name, binary=a.binary, args=a.args, port_count=a.port_count, port_args=a.port_arg)


def _instance_spec(a: argparse.Namespace) -> inst.InstanceSpec:
    return inst.InstanceSpec(
        name=a.name,
        type=a.type,
        volume_name=a.volume,
        port_count=a.port_count,
        port_args=a.port_arg,
        process_instance_spec=inst.ProcessInstanceSpec(binary=a.binary, args=a.args),
    )


def _show(a: argparse.Namespace, response: Any) -> None:
    emit(response, as_json=a.json, rows=[process_row(response)])


# -- process commands ----------------------------------------------------------


async def process_create(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _pm(ch).ProcessCreate(pm.ProcessCreateRequest(spec=_spec(a))))


async def process_replace(a: argparse.Namespace, ch: Channel) -> None:
    request = pm.ProcessReplaceRequest(spec=_spec(a), terminate_signal=a.signal)
    _show(a, await _pm(ch).ProcessReplace(request))


async def process_get(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _pm(ch).ProcessGet(pm.ProcessGetRequest(name=a.name)))


async def process_delete(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _pm(ch).ProcessDelete(pm.ProcessDeleteRequest(name=a.name, uuid=a.uuid)))


async def process_list(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _pm(ch).ProcessList(pm.ProcessListRequest())
    ordered = [reply.processes[k] for k in sorted(reply.processes)]
    emit(reply, as_json=a.json, rows=[process_row(r) for r in ordered])


async def process_log(a: argparse.Namespace, ch: Channel) -> None:
    await stream_lines(_pm(ch).ProcessLog, pm.LogRequest(name=a.name, follow=a.follow), as_json=a.json)


async def process_watch(a: argparse.Namespace, ch: Channel) -> None:
    async with _pm(ch).ProcessWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        async for event in stream:
            emit(event, as_json=a.json, rows=None if a.json else [process_row(event)])


# -- instance commands ---------------------------------------------------------


async def instance_create(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _inst(ch).InstanceCreate(inst.InstanceCreateRequest(spec=_instance_spec(a))))


async def instance_replace(a: argparse.Namespace, ch: Channel) -> None:
    request = inst.InstanceReplaceRequest(spec=_instance_spec(a), terminate_signal=a.signal)
    _show(a, await _inst(ch).InstanceReplace(request))


async def instance_get(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _inst(ch).InstanceGet(inst.InstanceGetRequest(name=a.name)))


async def instance_delete(a: argparse.Namespace, ch: Channel) -> None:
    _show(a, await _inst(ch).InstanceDelete(inst.InstanceDeleteRequest(name=a.name, uuid=a.uuid)))


async def instance_list(a: argparse.Namespace, ch: Channel) -> None:
    reply = await _inst(ch).InstanceList(Empty())
    ordered = [reply.instances[k] for k in sorted(reply.instances)]
    emit(reply, as_json=a.json, rows=[process_row(r) for r in ordered])


async def instance_log(a: argparse.Namespace, ch: Channel) -> None:
    await stream_lines(_inst(ch).InstanceLog, inst.InstanceLogRequest(name=a.name, follow=a.follow), as_json=a.json)


async def instance_watch(a: argparse.Namespace, ch: Channel) -> None:
    async with _inst(ch).InstanceWatch.open() as stream:
        await stream.send_message(Empty(), end=True)
        async for _ in stream:
            emit({"event": "changed"}, as_json=a.json)


async def version(a: argparse.Namespace, ch: Channel) -> None:
    emit(await _pm(ch).VersionGet(Empty()), as_json=a.json)


# -- parser --------------------------------------------------------------------


def _spec_args(p: argparse.ArgumentParser, instance: bool) -> None:
    p.add_argument("name")
    p.add_argument("binary", help="absolute path of the executable")
    p.add_argument("args", nargs="*", help="the binary's arguments; put them after --")
    p.add_argument("--port-count", type=int, default=0)
    p.add_argument("--port-arg", action="append", default=[], help="e.g. --port-arg=--listen,0.0.0.0:")
    if instance:
        p.add_argument("--type", default="", help="engine or replica")
        p.add_argument("--volume", default="")


def _v2_serve_args(serve: argparse.ArgumentParser) -> None:
    """Data engine V2's node settings (the ``[v2]`` table), so that a node
    starts in one line; each wins over the config file."""
    v2 = serve.add_argument_group("data engine V2 (overrides the [v2] table)")
    on = v2.add_mutually_exclusive_group()
    on.add_argument("--v2", dest="v2_enabled", action="store_true", default=None, help="serve data engine V2")
    on.add_argument("--no-v2", dest="v2_enabled", action="store_false")
    v2.add_argument("--spdk-dir", help="SPDK install prefix (bin/nvmf_tgt, lib/); default $SPDK_DIR")
    v2.add_argument("--replica-address", help="IP replicas listen on (engines on other nodes connect)")
    v2.add_argument("--engine-address", help="IP engines' frontends listen on (hosts connect)")
    v2.add_argument("--target-core-mask", help="cores of the SPDK target, e.g. 0x1 or [0]")
    v2.add_argument("--engine-core-mask", help="core of imd's own SPDK poller (engines), e.g. 0x2")
    v2.add_argument("--target-mem-mb", type=int, help="the target's memory in MiB (>= 64)")
    v2.add_argument("--engine-mem-mb", type=int, help="imd's SPDK memory in MiB (>= 64)")
    huge = v2.add_mutually_exclusive_group()
    huge.add_argument("--hugepages", dest="v2_hugepages", action="store_true", default=None)
    huge.add_argument("--no-hugepages", dest="v2_hugepages", action="store_false")
    v2.add_argument("--target-rpc-socket", help="the target's JSON-RPC socket; default <state-dir>/spdk-target.sock")
    v2.add_argument(
        "--target-arg",
        action="append",
        dest="target_args",
        help="an extra argument for the target, repeatable (e.g. --target-arg=--disable-cpumask-locks)",
    )
    v2.add_argument("--engine-idle-spin-us", type=int, help="how long imd's poller spins after work before it sleeps")
    v2.add_argument(
        "--replica-timeout-s", type=float, help="a replica that answers nothing this long leaves its engines' mirrors"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imd", description=__doc__)
    parser.add_argument("--addr", help="daemon base address HOST:PORT (default 127.0.0.1:8500)")
    parser.add_argument("--socket", help="daemon Unix socket (wins over --addr)")
    parser.add_argument("--tls-dir", help="directory with ca.crt, tls.crt, tls.key")
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.add_argument("--timeout", type=float, default=30.0)
    top = parser.add_subparsers(dest="group", required=True)

    serve = top.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--listen", help="HOST:PORT of the process-manager API (instance API on PORT+3)")
    serve.add_argument("--socket", dest="serve_socket", help="Unix socket path ('' to disable)")
    serve.add_argument("--state-dir")
    serve.add_argument("--logs-dir")
    serve.add_argument("--port-range", help="A-B")
    serve.add_argument("--log-level")
    serve.add_argument("--tls-dir", dest="serve_tls_dir")
    serve.add_argument("--metrics-listen", help="HOST:PORT of GET /metrics ('' to turn it off; default base port + 10)")
    children = serve.add_mutually_exclusive_group()
    children.add_argument("--stop-children", dest="stop_children", action="store_true", default=None)
    children.add_argument("--leave-children", dest="stop_children", action="store_false")
    _v2_serve_args(serve)

    for group, offset, commands in (
        (
            "process",
            0,
            {
                "create": process_create,
                "replace": process_replace,
                "get": process_get,
                "delete": process_delete,
                "list": process_list,
                "log": process_log,
                "watch": process_watch,
            },
        ),
        (
            "instance",
            3,
            {
                "create": instance_create,
                "replace": instance_replace,
                "get": instance_get,
                "delete": instance_delete,
                "list": instance_list,
                "log": instance_log,
                "watch": instance_watch,
            },
        ),
    ):
        sub = top.add_parser(group).add_subparsers(dest="command", required=True)
        for name, func in commands.items():
            p = sub.add_parser(name)
            p.set_defaults(func=func, port_offset=offset)
            if name in ("create", "replace"):
                _spec_args(p, instance=group == "instance")
                if name == "replace":
                    p.add_argument("--signal", default="SIGHUP")
            elif name in ("get", "delete", "log"):
                p.add_argument("name")
            if name == "delete":
                p.add_argument("--uuid", default="")
            if name == "log":
                p.add_argument("--follow", "-f", action="store_true")
    top.add_parser("version").set_defaults(func=version, port_offset=0)
    top.add_parser("status", help="the daemon at a glance").set_defaults(func=status, port_offset=0)
    add_v2_commands(top)
    add_backing_image_commands(top)
    add_backup_commands(top)
    return parser


async def _run_client(a: argparse.Namespace) -> int:
    channel = open_channel(address=a.addr, socket_path=a.socket, tls_dir=a.tls_dir, port_offset=a.port_offset)
    try:
        await a.func(a, channel)
        return 0
    except GRPCError as exc:
        sys.stderr.write(f"imd: {exc.status.name}: {exc.message}\n")
        return 1
    except (ConnectionError, OSError) as exc:
        sys.stderr.write(f"imd: cannot reach the daemon: {exc}\n")
        return 1
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.group == "serve":
        from imd.cli.serve import run_serve

        return run_serve(a)
    if a.group == "backup":
        from imd.cli.backup import run

        return run(a)
    import uvloop

    try:
        return uvloop.run(_run_client(a))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
