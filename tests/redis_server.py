"""A real ``redis-server`` (Debian's package) for the tests: on a unix socket in a temporary folder, with its
append-only file on, started and stopped by the test that needs it (restartable mid-test: the same socket,
the same data folder, so what was written survives a restart as it would in production)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = self.folder / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: apt-get install redis-server (.ci/run installs it)")
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "--port", "0",  # no TCP listener at all: the unix socket only
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.folder),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {log}")
            if self.socket.exists():
                try:
                    if redis.Redis(unix_socket_path=str(self.socket)).ping():
                        return self
                except redis.exceptions.RedisError:
                    pass
            time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not answer within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis(unix_socket_path=str(self.socket))


@pytest.fixture
def redis_server(tmp_path: Path):  # noqa: ANN201
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
