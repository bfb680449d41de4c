"""`aquafleet serve` as a real subprocess (for crashes: SIGKILL, SIGTERM, several nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


def metric_values(text: str) -> dict[str, float]:
    """The samples of a /metrics page by name without `aquafleet_` (`records_stored_total`,
    `devices_online`, `login_seconds_count{result="ok"}`), parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            name = sample.name.removeprefix("aquafleet_")
            values[f"{name}{{{labels}}}" if labels else name] = sample.value
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    tcp_port: int
    http_port: int
    env: dict[str, str]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    async def healthy(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def metrics(self) -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp,
        ):
            text = await resp.text()
        return metric_values(text)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def start_serve(
    tmp_path: Path, settings: dict[str, Any], *, name: str = "node", timeout: float = 30.0
) -> ServeProcess:
    """Start `aquafleet serve` in tmp_path with AQUAFLEET_* settings; returns once healthy."""
    tcp_port = settings.get("tcp_port") or free_port()
    http_port = settings.get("http_port") or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAFLEET_")}
    values = {**settings, "tcp_port": tcp_port, "http_port": http_port, "node_id": name}
    env.update({f"AQUAFLEET_{k.upper()}": str(v) for k, v in values.items()})
    log_path = tmp_path / f"{name}.log"
    log_file = log_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aquafleet.cli",
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=log_file,
        stderr=log_file,
    )
    log_file.close()
    node = ServeProcess(process, tcp_port, http_port, env, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{node.log()[-3000:]}")
        if await node.healthy():
            return node
        await asyncio.sleep(0.1)
    node.kill()
    raise TimeoutError(f"serve did not become healthy:\n{node.log()[-3000:]}")


@contextlib.asynccontextmanager
async def serve_processes() -> AsyncIterator[list[ServeProcess]]:
    """Every process started into the yielded list is killed at the end."""
    started: list[ServeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            node.kill()
        for node in started:
            with contextlib.suppress(Exception):
                await node.wait(10)
