"""One runner per output: a lease file taken by a conditional create and kept alive by a heartbeat.

A second runner is refused while the first one's heartbeat is fresh, and takes the output over once the
lease has expired (the first runner died). The create is atomic where the storage offers it: O_EXCL on
local disk, If-None-Match on S3; elsewhere the lease is written and read back, which narrows the race to
two runners starting within the same instant. `status` reads the same file to tell "running" from
"stopped".
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from jobs.manifest import OutputConflict, OutputStore
from jobs.write import create_atomic, is_local

LEASE_FILE = "_lease.json"
TTL_S = 60.0  # a lease not renewed for this long belongs to a runner that is gone
HEARTBEAT_S = 15.0


def read_lease(store: OutputStore) -> dict[str, Any] | None:
    """The output's lease, or None."""
    return store.read_json(LEASE_FILE)


def is_live(lease: dict[str, Any] | None, now: float | None = None) -> bool:
    """Whether a lease's runner is still at work: its heartbeat is fresh and, on this host, its process lives."""
    if not lease:
        return False
    if lease.get("host") == socket.gethostname() and not _pid_alive(lease.get("pid")):
        return False  # killed on this machine: no need to wait for the heartbeat to expire
    return (now or time.time()) - float(lease.get("heartbeat_at", 0)) < float(lease.get("ttl_s", TTL_S))


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # another user's process, or no pid recorded: assume alive
    return True


class Lease:
    """This runner's hold on one output: `acquire()`, then a heartbeat thread until `release()`."""

    def __init__(self, store: OutputStore, ttl_s: float = TTL_S, heartbeat_s: float = HEARTBEAT_S):
        self.store, self.ttl_s, self.heartbeat_s = store, ttl_s, heartbeat_s
        self.owner = uuid.uuid4().hex
        self.lost = False
        self._made: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        lease = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_at": now,
            "ttl_s": self.ttl_s,
        }
        return json.dumps(lease).encode("utf-8")

    def _create(self) -> bool:
        """Create the lease file if there is none; False when another runner's file is there."""
        fs = self.store.fs
        if is_local(fs) and not os.path.exists(self.store.root):
            # The folders this run makes (the output's, its metadata folder), removed again if it writes nothing.
            self._made = [self.store.root]
            parent = os.path.dirname(self.store.root)
            if not os.path.exists(parent):
                self._made.append(parent)
            fs.makedirs(self.store.root, exist_ok=True)
        return create_atomic(fs, self.store.root, LEASE_FILE, self._body(), self.store.policy, "lease")

    def acquire(self) -> None:
        """Take the output, or raise OutputConflict naming the runner that holds it."""
        for _ in range(2):
            if self._create():
                break
            held = read_lease(self.store)
            if held is None:
                continue  # released in the meantime
            if is_live(held):
                age = time.time() - float(held.get("heartbeat_at", 0))
                raise OutputConflict(
                    f"output.uri: {self.store.uri} is being written by another run (host {held.get('host')}, "
                    f"pid {held.get('pid')}, heartbeat {age:.0f} s ago); wait for it, or, if that run is gone, "
                    f"rerun after its lease expires ({held.get('ttl_s', TTL_S):.0f} s without a heartbeat)"
                )
            self.store.remove([LEASE_FILE])  # expired: its runner is gone; the next create decides who wins
        else:
            raise OutputConflict(f"output.uri: {self.store.uri}: another run took the lease at the same time")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = read_lease(self.store)
                if not held or held.get("owner") != self.owner:
                    self.lost = True  # taken over after we missed heartbeats: stop writing
                    return
                self.store.write_bytes(LEASE_FILE, self._body())
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                continue

    def check(self) -> None:
        """Raise OutputConflict when another runner took the output over (this one missed its heartbeats)."""
        if self.lost:
            raise OutputConflict(f"output.uri: {self.store.uri}: another run took over this output; stopping")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = read_lease(self.store)
        if held and held.get("owner") == self.owner:
            self.store.remove([LEASE_FILE])
        for folder in self._made:
            try:
                os.rmdir(folder)  # the run wrote nothing: leave no empty folder behind
            except OSError:
                break
