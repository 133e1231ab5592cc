"""A lease on one run date, so that two processes never work on (and pay for) the same run at once.

    with run_lease(config, run_date, stage="submit"):
        ...  # only one process in the world gets here for this run date

The lease lives next to the run's ledger, `<output_root>/ledger/run_date=D/lease/<gen>.json`, one
file per generation. The holder is whoever wrote the highest generation, as long as that file is
neither released nor expired. Taking the lease = creating generation N+1 with a conditional
create (only one process can create a given name):

- local paths: `os.open(..., O_CREAT | O_EXCL)`;
- s3:// : PutObject with `If-None-Match: *` (boto3 `put_object(IfNoneMatch="*")`, HTTP 412 when
  the object exists);
- gs:// : an upload with `if_generation_match=0` (google-cloud-storage).

Other filesystems have no create-if-absent through pyarrow.fs and are refused with a clear error.

A background thread renews the holder's own file every `ttl/4` seconds (only the holder writes
its generation, so a plain overwrite is enough). A holder that dies stops renewing; after `ttl`
anyone may take over. On the holder's own host a dead holder is seen at once (its pid is gone, or
belongs to a newer process), so a killed run is resumed without waiting for the expiry. If the
heartbeat finds a higher generation (this process was frozen for longer than the ttl and lost the
lease), it interrupts the main thread: better to stop than to spend alongside the new holder.

Within one process the lease is re-entrant: `run` holds it across its stages and each stage takes
it again for free. Light module: pyarrow only.
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import pyarrow.fs as pafs

from routellm_batch.ledger import atomic_output, filesystem_for, utcnow

if TYPE_CHECKING:
    from routellm_batch.config import RunConfig

__all__ = ["DEFAULT_TTL_SECONDS", "Holder", "Lease", "LeaseHeld", "LeaseStore", "acquire", "lease_uri", "run_lease"]

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 120.0
"""A holder that stopped renewing for this long (and is not provably alive) loses the lease."""


class LeaseHeld(RuntimeError):
    """Another process holds the run's lease; the message names it."""


# -- the stores: one conditional create per kind of filesystem ---------------------------------------


class LeaseStore(Protocol):
    """A folder of small objects with a create-if-absent."""

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create `name` holding `data` unless it exists; True when this call created it."""

    def write(self, name: str, data: bytes) -> None:
        """Replace `name` whole (only ever called by the holder, on its own generation)."""

    def read(self, name: str) -> bytes | None: ...

    def names(self) -> list[str]: ...

    def delete(self, name: str) -> None: ...


class _FsStore:
    """Reads, writes, lists and deletes through pyarrow.fs; subclasses add the conditional create."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self.fs, self.path = fs, path.rstrip("/")

    def write(self, name: str, data: bytes) -> None:
        with atomic_output(self.fs, f"{self.path}/{name}") as out:
            out.write(data)

    def read(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{name}") as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def names(self) -> list[str]:
        sel = pafs.FileSelector(self.path, allow_not_found=True)
        return [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File and not i.base_name.startswith(".")]

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(f"{self.path}/{name}")
        except (FileNotFoundError, OSError):
            pass

    def create_exclusive(self, name: str, data: bytes) -> bool:
        raise NotImplementedError


class LocalStore(_FsStore):
    def create_exclusive(self, name: str, data: bytes) -> bool:
        os.makedirs(self.path, exist_ok=True)
        # Write a temp file, then link it to the name: link() fails when the name exists (like
        # O_EXCL) and the lease file appears whole, so a reader never sees it half written.
        tmp = f"{self.path}/.{name}.{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, f"{self.path}/{name}")
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)


class S3Store(_FsStore):
    """PutObject with If-None-Match: * (S3 conditional writes, 2024); needs boto3."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        super().__init__(fs, path)
        bucket, _, prefix = self.path.partition("/")
        self.bucket, self.prefix = bucket, prefix

    def create_exclusive(self, name: str, data: bytes) -> bool:
        import boto3
        from botocore.exceptions import ClientError

        try:
            boto3.client("s3").put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}", Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise


class GcsStore(_FsStore):
    """An upload with if_generation_match=0 (create only if no live object); needs google-cloud-storage."""

    def create_exclusive(self, name: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud import storage

        bucket, _, prefix = self.path.partition("/")
        try:
            storage.Client().bucket(bucket).blob(f"{prefix}/{name}").upload_from_string(data, if_generation_match=0)
            return True
        except PreconditionFailed:
            return False


def store_for(uri: str) -> LeaseStore:
    fs, path = filesystem_for(uri)
    kind = fs.type_name
    if kind == "local":
        return LocalStore(fs, path)
    if kind == "s3":
        return S3Store(fs, path)
    if kind == "gcs":
        return GcsStore(fs, path)
    raise LeaseHeld(
        f"cannot take a run lease on {uri}: filesystem {kind!r} has no create-if-absent here "
        "(supported: local paths, s3://, gs://)"
    )


# -- the lease ---------------------------------------------------------------------------------------


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Holder:
    run_id: str
    stage: str
    host: str
    pid: int
    pid_start: str | None
    token: str
    since: datetime
    expires_at: datetime
    released: bool = False

    def to_bytes(self) -> bytes:
        raw = asdict(self) | {"since": self.since.isoformat(), "expires_at": self.expires_at.isoformat()}
        return json.dumps(raw, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        raw = json.loads(data)
        raw["since"] = datetime.fromisoformat(raw["since"])
        raw["expires_at"] = datetime.fromisoformat(raw["expires_at"])
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__ if k in raw})

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {self.since.strftime('%Y-%m-%d %H:%M:%S UTC')} (stage {self.stage})"

    def alive(self, now: datetime) -> bool:
        """Might this holder still be working? Released or expired: no. On this host: its pid decides."""
        if self.released or now >= self.expires_at:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # exists, owned by someone else
            start = _pid_start(self.pid)
            if start is not None and self.pid_start is not None and start != self.pid_start:
                return False  # the pid was reused by a newer process
        return True


def _gen_name(gen: int) -> str:
    return f"{gen:012d}.json"


def _generations(store: LeaseStore) -> list[int]:
    return sorted(int(n[:-5]) for n in store.names() if n.endswith(".json") and n[:-5].isdigit())


class Lease:
    """A held lease; renewed by a daemon thread until `release`."""

    def __init__(self, store: LeaseStore, gen: int, holder: Holder, ttl: float, where: str) -> None:
        self.store, self.gen, self.holder, self.ttl, self.where = store, gen, holder, ttl, where
        self.lost = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{holder.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except LeaseHeld as exc:
                self.lost = True
                log.error("%s; stopping this process's work on the run", exc)
                _thread.interrupt_main()
                return
            except Exception as exc:  # a store hiccup: the next beat tries again, well within the ttl
                log.warning("lease %s: renewal failed (%s); retrying", self.where, exc)

    def renew(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            newer = [g for g in _generations(self.store) if g > self.gen]
            if newer:
                data = self.store.read(_gen_name(newer[-1]))
                other = Holder.from_bytes(data).describe() if data else "another process"
                raise LeaseHeld(f"run {self.holder.run_id}: lease lost to {other}")
            self.holder = _with_expiry(self.holder, utcnow() + timedelta(seconds=self.ttl))
            self.store.write(_gen_name(self.gen), self.holder.to_bytes())

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if not self.lost:
                released = Holder(**{**asdict(self.holder), "released": True, "expires_at": utcnow()})
                self.store.write(_gen_name(self.gen), released.to_bytes())
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


def _with_expiry(h: Holder, expires_at: datetime) -> Holder:
    return Holder(**{**asdict(h), "expires_at": expires_at})


def acquire(uri: str, run_id: str, stage: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> Lease:
    """Take the lease at `uri` (a folder) or raise LeaseHeld naming the live holder."""
    store = store_for(uri)
    gens = _generations(store)
    now = utcnow()
    if gens:
        data = store.read(_gen_name(gens[-1]))
        current = Holder.from_bytes(data) if data else None
        if current is not None and current.alive(now):
            raise _held(current)
        if current is not None and not current.released:
            log.warning("run %s: taking over the lease of %s (expired or no longer running)", run_id, current.describe())
    gen = (gens[-1] + 1) if gens else 1
    me = Holder(
        run_id=run_id, stage=stage, host=socket.gethostname(), pid=os.getpid(), pid_start=_pid_start(os.getpid()),
        token=uuid.uuid4().hex, since=now, expires_at=now + timedelta(seconds=ttl),
    )  # fmt: skip
    if not store.create_exclusive(_gen_name(gen), me.to_bytes()):
        data = store.read(_gen_name(gen))
        raise _held(Holder.from_bytes(data)) if data else LeaseHeld(f"run {run_id}: another process took the lease just now")
    # A process that listed long ago may have created a generation below a newer one: the highest wins.
    top = _generations(store)[-1]
    if top != gen:
        store.write(_gen_name(gen), Holder(**{**asdict(me), "released": True}).to_bytes())
        data = store.read(_gen_name(top))
        raise _held(Holder.from_bytes(data)) if data else LeaseHeld(f"run {run_id}: another process took the lease just now")
    for old in gens:
        store.delete(_gen_name(old))
    log.debug("run %s: lease generation %d taken at %s", run_id, gen, uri)
    return Lease(store, gen, me, ttl, uri)


def _held(h: Holder) -> LeaseHeld:
    return LeaseHeld(
        f"run {h.run_id} is being worked on by {h.describe()}; "
        f"wait for it to finish (its lease expires {h.expires_at.strftime('%H:%M:%S UTC')} unless renewed)"
    )


def lease_uri(config: RunConfig, run_date: date) -> str:
    return f"{config.table_uri('ledger')}/run_date={run_date.isoformat()}/lease"


_HELD: dict[str, tuple[Lease, int]] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def run_lease(config: RunConfig, run_date: date, stage: str, *, ttl: float | None = None) -> Iterator[Lease]:
    """Hold the run date's lease for the block; re-entrant within this process."""
    uri = lease_uri(config, run_date)
    with _HELD_LOCK:
        if uri in _HELD:
            lease, depth = _HELD[uri]
            _HELD[uri] = (lease, depth + 1)
        else:
            lease = acquire(uri, config.run_id(run_date), stage, ttl=ttl or _ttl_from_env())
            _HELD[uri] = (lease, 1)
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            lease, depth = _HELD[uri]
            if depth > 1:
                _HELD[uri] = (lease, depth - 1)
            else:
                del _HELD[uri]
                lease.release()


def _ttl_from_env() -> float:
    # An operator knob (and the tests'): how long a silent holder blocks others.
    value = os.environ.get("ROUTELLM_LEASE_TTL_SECONDS")
    return float(value) if value else DEFAULT_TTL_SECONDS
