"""The controller registry: names, owners, and idempotent attach.

SPDK's NVMe driver has no controller names, and it silently reference-
counts a second connect of the same transport id and host NQN. The names,
and the rule that every attach has exactly one matching detach, live here.

The lesson this module exists for (Longhorn): an engine dies without
detaching its controllers; the next engine attaches under the same name,
gets "already exists", detaches, attaches, gets "already exists" again,
forever. Here each controller remembers the owner (an instance UUID) that
attached it, and ``attach`` resolves a leftover itself:

* same owner, same paths, controller alive: return it (idempotent);
* a different owner, a failed controller, or different paths: detach the
  leftover, attach fresh, once, and report what was cleaned up;
* the same owner asking for a different subsystem or host NQN under the
  name is a caller bug: NameConflict.

No attach ever retries in a loop. A detach preempts an attach in progress
for the same name (a long operation never blocks a detach). All state is
owned by one asyncio task context; no lock is held across the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from spdk_ffi.backend import Backend
from spdk_ffi.errors import AlreadyExists, Busy, Cancelled, InvalidOptions, NameConflict, PathInUse
from spdk_ffi.model import AttachResult, ControllerInfo, ControllerOpts, Path

log = logging.getLogger("spdk_ffi.initiator")

DEFAULT_OPTS = ControllerOpts()


class AttachRequest(msgspec.Struct, frozen=True):
    name: str
    paths: tuple[Path, ...]
    hostnqn: str
    opts: ControllerOpts
    owner: str
    take_over: bool


@dataclass
class _Controller:
    name: str
    owner: str
    hostnqn: str
    subnqn: str
    paths: list[Path]
    opts: ControllerOpts
    handle: Any  # the backend's opaque controller


@dataclass
class _Attach:
    request: AttachRequest
    task: asyncio.Task[AttachResult]
    preempted: bool = False


class Initiator:
    def __init__(self, backend: Backend[Any]) -> None:
        self._backend = backend
        self._controllers: dict[str, _Controller] = {}
        self._path_owner: dict[tuple[Path, str], str] = {}  # (path, hostnqn) -> name
        self._attaching: dict[str, _Attach] = {}
        self._detaching: dict[str, asyncio.Task[None]] = {}
        self._reaping: set[asyncio.Task[bool]] = set()
        # A backend that fails controllers by itself (every path down past
        # ctrlr_loss_timeout_sec) reports it here, and the name is freed.
        if hasattr(backend, "on_lost"):
            backend.on_lost = self._controller_lost

    # -- attach ----------------------------------------------------------------

    async def attach(
        self,
        name: str,
        paths: list[Path] | list[str],
        hostnqn: str,
        opts: ControllerOpts = DEFAULT_OPTS,
        *,
        owner: str = "",
        take_over: bool = True,
    ) -> AttachResult:
        """Attach ``name`` to ``paths`` (one subsystem); see the module doc.
        With ``take_over=False`` a leftover is not cleaned up: the call fails
        with AlreadyExists (EALREADY), as bdev_nvme does.

        A caller cancelled in the loop turn in which the attach completes
        sees only the cancellation, while the controller stays registered
        under ``owner``: an owner that gives up cleans up with
        ``detach(name, owner=...)``, which is a no-op if it holds nothing."""
        request = self._request(name, paths, hostnqn, opts, owner, take_over)
        pending = self._attaching.get(name)
        if pending is not None:
            if pending.request != request:
                raise Busy(f"controller {name}: another attach with different arguments is in progress")
            # Join it; cancelling this waiter leaves the attach running.
            return await self._outcome(pending, asyncio.shield(pending.task))
        for path in request.paths:
            holder = self._path_owner.get((path, request.hostnqn))
            if holder is not None and holder != name:
                raise PathInUse(f"path {path} is attached as controller {holder}")
        op = _Attach(request, asyncio.ensure_future(self._attach(request)))
        self._attaching[name] = op
        try:
            return await self._outcome(op, op.task)
        finally:
            if self._attaching.get(name) is op:
                del self._attaching[name]

    @staticmethod
    async def _outcome(op: _Attach, awaitable: Awaitable[AttachResult]) -> AttachResult:
        """A detach that preempted the attach is reported as Cancelled
        (ECANCELED), not as if the caller itself had been cancelled."""
        try:
            return await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if op.preempted and task is not None and not task.cancelling():
                raise Cancelled(f"attach of {op.request.name} was preempted by a detach") from None
            raise

    @staticmethod
    def _request(
        name: str, paths: list[Path] | list[str], hostnqn: str, opts: ControllerOpts, owner: str, take_over: bool
    ) -> AttachRequest:
        if not name or len(name) > 128 or "/" in name:
            raise InvalidOptions(f"controller name {name!r} must be 1-128 characters without '/'")
        parsed = tuple(p if isinstance(p, Path) else Path.parse(p) for p in paths)
        if not parsed:
            raise InvalidOptions(f"controller {name}: at least one path is required")
        for path in parsed:
            path.validate()
        if len(set(parsed)) != len(parsed):
            raise InvalidOptions(f"controller {name}: duplicate paths")
        if len({p.subnqn for p in parsed}) != 1:
            raise InvalidOptions(f"controller {name}: all paths must lead to one subsystem (subnqn)")
        if not hostnqn.startswith("nqn.") or len(hostnqn) > 223:
            raise InvalidOptions(f"controller {name}: hostnqn must be an NQN of at most 223 bytes")
        opts.validate()
        return AttachRequest(name, parsed, hostnqn, opts, owner, take_over)

    async def _attach(self, request: AttachRequest) -> AttachResult:
        name = request.name
        detaching = self._detaching.get(name)
        if detaching is not None:
            await asyncio.shield(detaching)  # the driver refuses a connect during teardown
        existing = self._controllers.get(name)
        cleaned_up = None
        if existing is not None:
            reason = self._leftover_reason(existing, request)
            if reason is None:
                return AttachResult(self._info(existing), reused=True, cleaned_up=None)
            if not request.take_over:
                raise AlreadyExists(f"controller {name} already exists ({reason})")
            log.warning("cleaning up leftover controller %s: %s", name, reason)
            await self._detach_now(existing)
            cleaned_up = reason
        handle = await self._backend.connect(list(request.paths), request.hostnqn, request.opts)
        controller = _Controller(
            name=name,
            owner=request.owner,
            hostnqn=request.hostnqn,
            subnqn=request.paths[0].subnqn,
            paths=list(request.paths),
            opts=request.opts,
            handle=handle,
        )
        self._controllers[name] = controller
        for path in controller.paths:
            self._path_owner[(path, controller.hostnqn)] = name
        return AttachResult(self._info(controller), reused=False, cleaned_up=cleaned_up)

    def _leftover_reason(self, existing: _Controller, request: AttachRequest) -> str | None:
        """None if ``existing`` is what ``request`` asks for; else why not."""
        subnqn = request.paths[0].subnqn
        if existing.owner == request.owner and (existing.subnqn != subnqn or existing.hostnqn != request.hostnqn):
            raise NameConflict(
                f"controller {existing.name} is attached to {existing.subnqn} for host {existing.hostnqn} "
                f"by the same owner"
            )
        if existing.owner != request.owner:
            return f"owner changed from {existing.owner or '(none)'} to {request.owner or '(none)'}"
        if self._backend.failed(existing.handle):
            return "the controller had failed"
        if set(existing.paths) != set(request.paths):
            return "the paths changed"
        return None

    # -- detach ----------------------------------------------------------------

    async def detach(self, name: str, *, owner: str | None = None) -> bool:
        """Detach ``name``; False (logged) if there is no such controller. An
        attach in progress for the name is cancelled first.

        With ``owner``, only what that owner holds is touched: another
        owner's controller, or another owner's attach in progress (it may be
        taking over this owner's leftover), is left alone and the call
        returns False. An owner tearing down must never take a name that
        someone else has just claimed, as a stale UUID must never kill a
        process re-created under the same name."""
        pending = self._attaching.get(name)
        if pending is not None and (owner is None or pending.request.owner == owner):
            del self._attaching[name]
            pending.preempted = True
            pending.task.cancel()
            with contextlib.suppress(BaseException):
                await pending.task
        elif pending is not None:
            log.info("detach %s for %s: another owner is attaching it (left alone)", name, owner)
            return False
        controller = self._controllers.get(name)
        if controller is None or (owner is not None and controller.owner != owner):
            if pending is None:
                log.info("detach %s: no such controller%s (nothing to do)", name, f" of {owner}" if owner else "")
            return pending is not None
        await self._detach_now(controller)
        return True

    async def _detach_now(self, controller: _Controller) -> None:
        # Forget the name first: from here on a new attach may claim it (it
        # waits for this teardown before connecting).
        del self._controllers[controller.name]
        for path in controller.paths:
            self._path_owner.pop((path, controller.hostnqn), None)
        task = asyncio.ensure_future(self._backend.disconnect(controller.handle))
        self._detaching[controller.name] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._detaching.get(controller.name) is task:
                del self._detaching[controller.name]

    async def sweep(self, live_owners: set[str]) -> list[str]:
        """Detach every controller whose owner is not in ``live_owners``."""
        stale = [c.name for c in self._controllers.values() if c.owner not in live_owners]
        for name in stale:
            await self.detach(name)
        return stale

    def _controller_lost(self, handle: Any) -> None:
        for controller in self._controllers.values():
            if controller.handle is handle:
                log.warning("controller %s lost every path past its loss timeout; detaching", controller.name)
                task = asyncio.ensure_future(self.detach(controller.name))
                self._reaping.add(task)
                task.add_done_callback(self._reaping.discard)
                return

    # -- paths -----------------------------------------------------------------

    async def add_path(self, name: str, path: Path | str) -> None:
        controller = self._require(name)
        parsed = path if isinstance(path, Path) else Path.parse(path)
        parsed.validate()
        if parsed.subnqn != controller.subnqn:
            raise InvalidOptions(f"controller {name}: path {parsed} leads to another subsystem")
        holder = self._path_owner.get((parsed, controller.hostnqn))
        if holder is not None:
            raise PathInUse(f"path {parsed} is attached as controller {holder}")
        self._path_owner[(parsed, controller.hostnqn)] = name
        try:
            await self._backend.add_path(controller.handle, parsed)
        except BaseException:
            self._path_owner.pop((parsed, controller.hostnqn), None)
            raise
        controller.paths.append(parsed)

    async def remove_path(self, name: str, path: Path | str) -> None:
        controller = self._require(name)
        parsed = path if isinstance(path, Path) else Path.parse(path)
        if parsed not in controller.paths:
            raise InvalidOptions(f"controller {name} has no path {parsed}")
        if len(controller.paths) == 1:
            raise InvalidOptions(f"controller {name}: cannot remove its last path; detach it instead")
        controller.paths.remove(parsed)
        self._path_owner.pop((parsed, controller.hostnqn), None)
        await self._backend.remove_path(controller.handle, parsed)

    # -- I/O -------------------------------------------------------------------

    async def io(self, name: str, ios: Sequence[Any]) -> None:
        """A batch of I/Os on controller ``name`` (see the backend's ``io``)."""
        await self._backend.io(self._require(name).handle, ios)

    # -- queries ---------------------------------------------------------------

    def controllers(self) -> list[ControllerInfo]:
        return [self._info(c) for c in self._controllers.values()]

    def handle(self, name: str) -> Any:
        return self._require(name).handle

    def _require(self, name: str) -> _Controller:
        controller = self._controllers.get(name)
        if controller is None:
            if name in self._attaching:
                raise Busy(f"controller {name} is still attaching")
            raise InvalidOptions(f"no controller named {name}")
        return controller

    def _info(self, c: _Controller) -> ControllerInfo:
        return ControllerInfo(
            name=c.name,
            owner=c.owner,
            hostnqn=c.hostnqn,
            subnqn=c.subnqn,
            failed=self._backend.failed(c.handle),
            paths=tuple(self._backend.path_states(c.handle)),
            namespaces=tuple(self._backend.namespaces(c.handle)),
            counters=self._backend.counters(c.handle),
        )
