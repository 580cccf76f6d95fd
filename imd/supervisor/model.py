"""Domain state, as msgspec Structs. Protobuf objects never get this far in."""

from __future__ import annotations

import enum

import msgspec


class ProcessState(enum.StrEnum):
    """Lifecycle states, in the only order they may be entered.

    Longhorn's wire strings. A state is never left for an earlier one: a
    stopping process cannot become running again, whatever a late health
    probe says.
    """

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in (ProcessState.STOPPED, ProcessState.ERROR)


_RANK = {
    ProcessState.STARTING: 0,
    ProcessState.RUNNING: 1,
    ProcessState.STOPPING: 2,
    ProcessState.STOPPED: 3,
    ProcessState.ERROR: 3,
}


class ProcessSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the client asked to run. ``args`` are the client's own, before
    port arguments are rendered onto them."""

    name: str
    binary: str
    args: tuple[str, ...] = ()
    port_count: int = 0
    port_args: tuple[str, ...] = ()


class InstanceInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the instance API knows beyond the process: its kind and volume.
    Empty for processes created through the process-manager API."""

    type: str = ""
    volume_name: str = ""


NO_INSTANCE = InstanceInfo()


class PortBlock(msgspec.Struct, frozen=True):
    """A contiguous block of ports, ``start`` to ``end`` inclusive."""

    start: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.start + 1


def render_args(spec: ProcessSpec, ports: PortBlock | None) -> tuple[str, ...]:
    """Longhorn's rendering: ``port_args[i] + str(port_start + i)``, split on
    commas, appended after the client's args (so ``"--listen,0.0.0.0:"``
    becomes two argv entries)."""
    if ports is None or not spec.port_args:
        return spec.args
    rendered = list(spec.args)
    for i, arg in enumerate(spec.port_args):
        rendered.extend(f"{arg}{ports.start + i}".split(","))
    return tuple(rendered)


class ProcessView(msgspec.Struct, frozen=True):
    """One process as clients see it, at one moment: a Get/List entry or a
    watch event. ``args`` are the rendered args, as Longhorn echoes them.
    ``deleted`` is decided when the view is taken, never when it is sent."""

    name: str
    uuid: str
    binary: str
    args: tuple[str, ...]
    port_count: int
    port_args: tuple[str, ...]
    state: ProcessState
    error_msg: str
    port_start: int
    port_end: int
    deleted: bool
    instance: InstanceInfo
    conditions: tuple[tuple[str, bool], ...] = ()
    """Longhorn's engine conditions (``FilesystemReadOnly``), sorted by name."""


class ProcessEvent(msgspec.Struct, frozen=True):
    """A state change. ``seq`` orders all events of the daemon; it lets the
    wire layer encode each event once for every watcher."""

    seq: int
    view: ProcessView
