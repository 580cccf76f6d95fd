"""Process semantics shared by both wire APIs (process manager and V1 instances)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import msgspec

from imd.buildinfo import BUILD, BuildInfo
from imd.errors import AlreadyExists, NotFound, Unavailable
from imd.services.validation import (
    PROCESS_FIELDS,
    SpecFields,
    parse_terminate_signal,
    validate_name,
    validate_spec,
)
from imd.supervisor.broadcast import Subscription
from imd.supervisor.durability import Durability
from imd.supervisor.model import NO_INSTANCE, InstanceInfo, ProcessEvent, ProcessSpec, ProcessView
from imd.supervisor.supervisor import Supervisor

# Longhorn's instance-manager API level: >= 4 makes a manager use the
# InstanceService path; 7 is the current one.
API_VERSION = 7
API_MIN_VERSION = 1


class VersionInfo(msgspec.Struct, frozen=True):
    build: BuildInfo = BUILD
    api_version: int = API_VERSION
    api_min_version: int = API_MIN_VERSION
    proxy_api_version: int = API_VERSION
    proxy_api_min_version: int = API_MIN_VERSION


class Lifecycle:
    """Whether the daemon accepts new work. Cleared when a drain starts, so
    that requests arriving during shutdown fail with UNAVAILABLE instead of
    starting children that would be torn down a moment later."""

    def __init__(self) -> None:
        self.accepting = True
        self._draining: asyncio.Future[None] | None = None

    @property
    def draining(self) -> asyncio.Future[None]:
        """Completes when a drain starts: open-ended streams end on it."""
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_future()
        return self._draining

    def start_drain(self) -> None:
        self.accepting = False
        if not self.draining.done():
            self.draining.set_result(None)

    def check(self) -> None:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down")


class ProcessService:
    """Mutating calls return only once their change is on disk (the
    supervisor commits it, or undoes it and raises). While the state cannot
    be written at all (``durability`` degraded) they fail at once with the
    store's error, before anything is spawned or signalled; reads, watches
    and log streams go on."""

    def __init__(self, supervisor: Supervisor, lifecycle: Lifecycle, durability: Durability | None = None) -> None:
        self.supervisor = supervisor
        self.lifecycle = lifecycle
        self.durability = durability if durability is not None else Durability()
        # Whether a name is taken by an instance that is not a process (a V2
        # replica or engine): instance names are one namespace.
        self.taken_elsewhere: Callable[[str], bool] = lambda name: False

    def exists(self, name: str) -> bool:
        try:
            self.supervisor.get(name)
        except NotFound:
            return False
        return True

    async def create(
        self,
        spec: ProcessSpec,
        instance: InstanceInfo = NO_INSTANCE,
        fields: SpecFields = PROCESS_FIELDS,
    ) -> ProcessView:
        self.lifecycle.check()
        validate_spec(spec, fields)
        if self.taken_elsewhere(spec.name):
            raise AlreadyExists(f"instance {spec.name} already exists (data engine V2)", field=fields.name)
        self.durability.check()
        return await self.supervisor.create(spec, instance)

    async def delete(self, name: str, uuid: str = "", name_field: str = "name") -> ProcessView:
        validate_name(name, name_field)
        self.durability.check()
        return await self.supervisor.delete(name, uuid)

    def get(self, name: str, name_field: str = "name") -> ProcessView:
        validate_name(name, name_field)
        return self.supervisor.get(name)

    def list(self) -> list[ProcessView]:
        return self.supervisor.views()

    async def replace(
        self,
        spec: ProcessSpec,
        terminate_signal: str,
        instance: InstanceInfo = NO_INSTANCE,
        fields: SpecFields = PROCESS_FIELDS,
    ) -> ProcessView:
        self.lifecycle.check()
        validate_spec(spec, fields)
        sig: signal.Signals = parse_terminate_signal(terminate_signal)
        self.durability.check()
        return await self.supervisor.replace(spec, sig, instance)

    def log_lines(self, name: str, *, follow: bool, name_field: str = "name") -> AsyncIterator[str]:
        """Lines of ``name``'s log. Following stops when the process is
        removed; a recently deleted process's log is still readable."""
        validate_name(name, name_field)
        logs = self.supervisor.logs
        try:
            self.supervisor.get(name)
        except NotFound:
            return logs.lines(logs.readable_after_delete(name), follow=False)
        until = (self.supervisor.removal_of(name), self.lifecycle.draining) if follow else ()
        return logs.lines(logs.path_for(name), follow=follow, until=until)

    def watch(self) -> Subscription[ProcessEvent]:
        return self.supervisor.events.subscribe()

    def version(self) -> VersionInfo:
        return VersionInfo()
