"""The instance monitor: this process's row in ``instances``, and cleanup after dead ones.

Every pending hold records the process (instance) holding it. A process that dies without
settling (SIGKILL, a crash, a lost machine) leaves holds that lock its customers' money.
The monitor, one per process:

- at start, registers this process, then recovers every instance it can tell is gone
  before the gateway serves anything;
- every ``wallet.instance_heartbeat_seconds``, refreshes its heartbeat and recovers again;
- at a graceful stop (after the wallets drained), recovers itself: any hold still pending
  is voided, and its row is removed.

An instance is gone when it shares this process's pid namespace (same host name, same
kernel boot id and same pid-namespace inode: containers with the host's name but their own
pids do not count) and its pid is not a live process (or is this process's pid but registered
before this process started: a restarted container's server is often pid 1), or when its
heartbeat is older than ``wallet.instance_stale_seconds``, by the database's clock (the only
test that works across machines and namespaces). Where /proc cannot tell the namespace, only
the heartbeat counts. Recovering one voids its pending holds (nothing charged: what the
upstream produced was never counted) and records each such request as ``interrupted``, and
writes the logs of the requests it had settled but not logged yet (each settle keeps a copy
in its hold), in one transaction (:meth:`storage.Storage.recover_instance`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
from collections.abc import Sequence

import trio

from omixa.engine.config import WalletConfig
from omixa.storage import Instance, RequestLog, Storage, StorageError

log = logging.getLogger("omixa.instances")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Engines opened by this process register after this; an instance with our pid registered
# before it belongs to an earlier process.
_PROCESS_STARTED = dt.datetime.now(dt.UTC)


def host_identity() -> tuple[str, bool]:
    """This process's host identity and whether pids can be compared within it: the host
    name, the kernel's boot id and the pid namespace's inode (Linux). Two processes with the
    same identity see each other's pids."""
    name = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{name}|?", False
    return f"{name}|{boot}|{namespace}", True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def new_instance_id() -> str:
    return f"inst_{secrets.token_hex(8)}"


class InstanceMonitor:
    def __init__(
        self,
        storage: Storage,
        config: WalletConfig,
        instance_id: str,
        *,
        wallets_drained: trio.Event,
        usage_drained: trio.Event | None = None,
    ) -> None:
        self._storage = storage
        self._wallets_drained = wallets_drained
        self._usage_drained = usage_drained
        self._config = config
        self.id = instance_id
        self.host, self._pids_comparable = host_identity()
        self.pid = os.getpid()
        self._stop = trio.Event()
        self.recovered = 0  # request logs written by this process's recoveries
        # Processes alive at the last check, this one included (a cluster's share divides by it).
        self.live = 1

    def is_gone(self, other: Instance) -> bool:
        if other.id == self.id:
            return False
        return self._pid_says_gone(other) or other.heartbeat_age > self._config.instance_stale_seconds

    def _pid_says_gone(self, other: Instance) -> bool:
        if other.id == self.id or other.host != self.host or not self._pids_comparable:
            return False
        if other.pid != self.pid:
            return not _pid_alive(other.pid)
        # Our pid, registered before this process started: an earlier process that had it.
        return other.started_at < _PROCESS_STARTED

    async def recover_gone(self) -> int:
        """Recover every instance that is gone; return the number of request logs written."""
        now = _now()
        count = 0
        others = await self._storage.list_instances()
        self.live = 1 + sum(1 for other in others if other.id != self.id and not self.is_gone(other))
        for other in others:
            if self.is_gone(other):
                # Gone by its pid: certain. Gone by its heartbeat: re-checked in the
                # recovery's transaction, so a heartbeat arriving meanwhile wins.
                stale = None if self._pid_says_gone(other) else self._config.instance_stale_seconds
                logs = await self._storage.recover_instance(other.id, now, stale_after=stale)
                interrupted, settled = _split(logs)
                if logs:
                    log.warning(
                        "instance %s (host %s, pid %d) is gone: voided %d pending holds (requests "
                        "recorded as interrupted: %s); wrote the logs of %d requests it had settled",
                        other.id,
                        other.host,
                        other.pid,
                        len(interrupted),
                        ", ".join(entry.id for entry in interrupted) or "none",
                        len(settled),
                    )
                count += len(logs)
        self.recovered += count
        return count

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, recover the gone, report ready, then heartbeat until :meth:`close`."""
        now = _now()
        me = Instance(id=self.id, host=self.host, pid=self.pid, started_at=now, heartbeat_at=now)
        await self._storage.register_instance(me)
        await self.recover_gone()
        task_status.started()
        interval = self._config.instance_heartbeat_seconds
        while not self._stop.is_set():
            with trio.move_on_after(interval):
                await self._stop.wait()
            if self._stop.is_set():
                break
            try:
                if not await self._storage.heartbeat_instance(me):
                    log.error(
                        "this process (instance %s) was taken for dead by another and its pending "
                        "holds were released; registered again. Check that heartbeats reach the "
                        "database within wallet.instance_stale_seconds",
                        self.id,
                    )
                await self.recover_gone()
            except StorageError as exc:
                log.warning("instance heartbeat failed: %s", exc)
        # Only once every wallet actor served its mailbox (no settle can still be on its way)
        # and the usage aggregator wrote what it had (so the copies its logs clear are gone).
        await self._wallets_drained.wait()
        if self._usage_drained is not None:
            await self._usage_drained.wait()
        try:
            logs = await self._storage.recover_instance(self.id, _now())
        except StorageError as exc:
            # The row stays; the next start on this host (or the heartbeat timeout) recovers it.
            log.warning("could not deregister this instance: %s", exc)
            return
        interrupted, settled = _split(logs)
        if interrupted:
            log.warning("%d holds were still pending at shutdown; voided", len(interrupted))
        if settled:
            log.warning(
                "%d request logs the usage aggregator had not written were written from their holds", len(settled)
            )

    def close(self) -> None:
        """Stop heartbeating; the monitor then recovers its own leftovers and returns."""
        self._stop.set()


def _split(logs: Sequence[RequestLog]) -> tuple[list[RequestLog], list[RequestLog]]:
    """Logs a recovery wrote: those of the holds it voided (``interrupted``, nothing charged,
    never routed as far as the log knows), and those of requests the process had settled."""
    interrupted = [
        entry for entry in logs if entry.status == "interrupted" and entry.cost == 0 and entry.deployment is None
    ]
    return interrupted, [entry for entry in logs if entry not in interrupted]
