"""Who may touch the cache file, and when.

Two locks guard the one DuckDB file:

1. DuckDB's own file lock. Either ONE process holds a read-write connection, or any number hold read-only ones;
   while a writer is connected a reader cannot even open the file (and the reverse). Inside one process, a
   read-only and a read-write connection to the same file conflict as well, and so can two threads opening
   and closing connections to it at the same moment.
   Connections are therefore short-lived, and opening one retries briefly on such a conflict
   (`open_with_retry`) before giving up with a CacheBusyError that a person can read. Because the lock does
   not queue, a writer that has to wait announces itself (`bars.duckdb.writer-waiting` next to the database,
   and a counter inside the process) and new readers let it go first (writer priority).

2. The refresh lock: a `filelock` lock file next to the database (`bars.duckdb.refresh.lock`) that every job
   writing bars (refresh, import, demo seeding) holds for its whole run, so only one such job runs at a time.
   The holder writes who it is (pid, user@host, command, start time) into the lock file, so a second job can
   say who is running instead of just "busy". The OS drops the lock when the holder dies, even on SIGKILL; the
   stale text left in the file is only ever read while somebody holds the lock, i.e. it is then current.
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import filelock
import pandas as pd

T = TypeVar("T")

# Backoff between attempts to open a locked file: starts short because most writer batches finish in well under
# a second, grows so that a long import is not hammered, and is jittered so that several waiting readers do not
# retry in lock step.
FIRST_BACKOFF_SECONDS = 0.01
MAX_BACKOFF_SECONDS = 0.25

# What DuckDB 2.0 says when the file is in use elsewhere: another process holds the lock; or, inside this
# process, a connection with the other read_only setting is open ("different configuration"), or one is being
# opened or torn down by another thread at the same moment ("unique file handle conflict").
_LOCK_MESSAGES = ("could not set lock", "conflicting lock", "different configuration", "unique file handle conflict")
_LOCK_ERRORS = (duckdb.IOException, duckdb.ConnectionException, duckdb.ResourceInUseException)
_PID_IN_MESSAGE = re.compile(r"PID (\d+)")


class CacheBusyError(RuntimeError):
    """The cache stayed locked by another connection for longer than we were willing to wait."""

    def __init__(self, db_path: Path, waited_seconds: float, holder_pid: int | None, writing: bool):
        self.db_path = db_path
        self.waited_seconds = waited_seconds
        self.holder_pid = holder_pid
        who = f"another program (pid {holder_pid})" if holder_pid else "another connection in this program"
        action = "save to" if writing else "read"
        likely = "other programs are reading it" if writing else "a refresh or import is probably running"
        super().__init__(
            f"The bar cache {db_path} is busy: {who} is using it, so we could not {action} it "
            f"(waited {waited_seconds:.1f} s); {likely}. Please try again in a moment."
        )


def is_lock_conflict(error: BaseException) -> bool:
    """True for DuckDB's "someone else has this file open" errors, which are worth retrying."""
    if not isinstance(error, _LOCK_ERRORS):
        return False
    text = str(error).lower()
    return any(message in text for message in _LOCK_MESSAGES)


def open_with_retry(
    open_connection: Callable[[], T], db_path: Path, retry_seconds: float, writing: bool
) -> T:
    """Call open_connection until it stops failing on a lock conflict, for at most retry_seconds.

    A reader first holds back while a writer is waiting for the file (see "writer priority" below).
    """
    deadline = time.monotonic() + retry_seconds
    started = time.monotonic()
    backoff = FIRST_BACKOFF_SECONDS
    announced = False
    try:
        while True:
            if not writing:
                _hold_back_for_writers(db_path, deadline)
            try:
                return open_connection()
            except _LOCK_ERRORS as error:
                if not is_lock_conflict(error):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    match = _PID_IN_MESSAGE.search(str(error))
                    holder = int(match.group(1)) if match else None
                    raise CacheBusyError(db_path, time.monotonic() - started, holder, writing) from None
                if writing:
                    _announce_writer(db_path, first=not announced)
                    announced = True
                time.sleep(min(remaining, backoff * random.uniform(0.5, 1.0)))
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    finally:
        if announced:
            _withdraw_writer(db_path)


# --- writer priority ----------------------------------------------------------------------------------------
# DuckDB's file lock does not queue: a writer that retries while readers keep opening the file can wait until
# it gives up. So a writer that finds the file busy announces itself, to threads of its own process (a counter)
# and to other processes (a marker file next to the database, touched on every attempt), and readers hold back
# new opens while an announcement is fresh. The file then falls free as soon as the current reads finish. A
# marker left by a writer that was killed goes stale within WRITER_MARKER_FRESH_SECONDS and is ignored.

WRITER_MARKER_FRESH_SECONDS = 1.0
_writers_waiting: dict[Path, int] = {}
_writers_waiting_lock = threading.Lock()


def writer_marker_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".writer-waiting")


def _key(db_path: Path) -> Path:
    return Path(os.path.abspath(db_path))


def _announce_writer(db_path: Path, first: bool) -> None:
    if first:
        with _writers_waiting_lock:
            _writers_waiting[_key(db_path)] = _writers_waiting.get(_key(db_path), 0) + 1
    with contextlib.suppress(OSError):  # priority is a courtesy: never fail a write over the marker
        writer_marker_path(db_path).touch()


def _withdraw_writer(db_path: Path) -> None:
    with _writers_waiting_lock:
        _writers_waiting[_key(db_path)] -= 1
        last = _writers_waiting[_key(db_path)] == 0
        if last:
            del _writers_waiting[_key(db_path)]
    if last:
        writer_marker_path(db_path).unlink(missing_ok=True)


def _writer_waiting(db_path: Path) -> bool:
    if _writers_waiting.get(_key(db_path)):
        return True
    try:
        age = time.time() - writer_marker_path(db_path).stat().st_mtime
    except OSError:
        return False
    return age < WRITER_MARKER_FRESH_SECONDS


def _hold_back_for_writers(db_path: Path, deadline: float) -> None:
    """Wait (until deadline at most) while a writer is waiting for the file."""
    pause = FIRST_BACKOFF_SECONDS
    while _writer_waiting(db_path) and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, MAX_BACKOFF_SECONDS / 5)


# --- the refresh lock ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockHolder:
    """Who holds the refresh lock, as written into the lock file by the holder itself."""

    pid: int
    who: str  # user@host
    command: str
    started_at: str  # ISO 8601, UTC

    @property
    def identity(self) -> str:
        """How refresh_log names the writer: "user@host pid 1234"."""
        return f"{self.who} pid {self.pid}"

    def describe(self) -> str:
        return f"pid {self.pid} ({self.who}, since {self.started_at}: {self.command})"


class RefreshBusyError(RuntimeError):
    """Another refresh, import or seeding job holds the refresh lock."""

    def __init__(self, lock_path: Path, holder: LockHolder | None):
        self.lock_path = lock_path
        self.holder = holder
        running = holder.describe() if holder else "a process that has not said who it is yet"
        super().__init__(f"a refresh is already running: {running}; lock file {lock_path}")


def current_identity() -> str:
    """user@host of this process; getpass fails in some containers that have no user name for the uid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def refresh_lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".refresh.lock")


def read_lock_holder(db_path: Path) -> LockHolder | None:
    """What the lock file says about its holder; None when it says nothing readable."""
    try:
        data = json.loads(refresh_lock_path(db_path).read_text(encoding="utf-8"))
        return LockHolder(int(data["pid"]), str(data["who"]), str(data["command"]), str(data["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def refresh_lock(db_path: Path, command: str, wait_seconds: float = 0.0) -> Iterator[LockHolder]:
    """Hold the refresh lock for db_path; raise RefreshBusyError if it stays taken for wait_seconds.

    wait_seconds=0 makes exactly one attempt: a second refresh exits at once instead of queueing.
    """
    lock_path = refresh_lock_path(db_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    me = LockHolder(
        pid=os.getpid(),
        who=current_identity(),
        command=command,
        started_at=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    )

    def announce(fd: int) -> None:
        # Runs while we hold the flock: replace the previous holder's note with ours.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)

    lock = filelock.FileLock(
        lock_path, timeout=wait_seconds, preserve_lock_file=True, fallback_to_soft=False, on_acquired=announce
    )
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RefreshBusyError(lock_path, read_lock_holder(db_path)) from None
    try:
        yield me
    finally:
        lock.release()
