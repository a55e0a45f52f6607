"""Real local services for tests: a `redis-server` on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from dist_helpers import free_port

REDIS_SERVER = shutil.which("redis-server")


def start_redis(tmp: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """Start redis-server (no persistence) in `tmp`; skip when the binary is missing."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")
