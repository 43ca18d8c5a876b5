"""A real pool and a real provider agent, started from the gradpool binary.

The binary is ``$GRADPOOL_BIN``, else the workspace's ``target/debug/gradpool``
(which ``cargo test`` builds). Each process gets a data directory under the
session's temporary directory and a free port on 127.0.0.1; it is stopped
when the session ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]


def binary() -> str:
    path = os.environ.get("GRADPOOL_BIN") or str(REPO / "target" / "debug" / "gradpool")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no gradpool binary at {path}: run `cargo build` (or `cargo test`) first, "
            "or set GRADPOOL_BIN"
        )
    return path


@dataclass
class Process:
    proc: subprocess.Popen
    lines: List[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(args: List[str], wait_for: Sequence[str] = ()) -> "tuple[Process, List[re.Match]]":
    """Starts ``gradpool ARGS`` and reads its output until a line matches
    each of ``wait_for`` in turn (the rest is drained in the background)."""
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    proc = subprocess.Popen(
        [binary(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: List[str] = []
    found: List[re.Match] = []
    assert proc.stdout is not None
    for line in proc.stdout if wait_for else ():
        lines.append(line)
        m = re.search(wait_for[len(found)], line)
        if m:
            found.append(m)
            if len(found) == len(wait_for):
                break
    if len(found) < len(wait_for):
        proc.wait()
        raise RuntimeError(f"gradpool {' '.join(args)} exited:\n{''.join(lines)}")
    out = proc.stdout

    def drain() -> None:
        for line in out:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return Process(proc, lines), found


@dataclass
class Pool:
    url: str
    process: Process
    data_dir: Path
    fingerprint: Optional[str] = None


def start_pool(data_dir: Path, tls: bool = False) -> Pool:
    args = [
        "pool", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
        "--no-hardware-proof", "--signups-per-hour", "1000",
        "--lease-seconds", "6", "--heartbeat-seconds", "1",
        # One provider cannot audit itself: no audits are drawn, so jobs
        # end as soon as they trained (`job.verify()` replays them here).
        "--audit-p-new", "0", "--audit-floor", "0", "--plant-rate", "0",
    ]
    wait_for = [r"pool listening on (\S+)"]
    if tls:
        args.append("--tls-self-signed")
        wait_for.append(r"certificate (sha256:[0-9a-f]{64})")
    process, found = spawn(args, wait_for)
    fingerprint = found[1].group(1) if tls else None
    return Pool(url=found[0].group(1), process=process, data_dir=data_dir, fingerprint=fingerprint)


def wait_for_provider(pool: Pool, name: str, rig: Process, limit: float = 120.0) -> None:
    """Waits until the agent has registered and heart-beats as ``idle``."""
    from gradpool import Client

    client = Client.create_account(pool.url, "fixture")
    deadline = time.monotonic() + limit
    while not any(p.name == name and p.status == "idle" for p in client.providers()):
        if rig.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"provider {name} never came up:\n{''.join(rig.lines)}")
        time.sleep(0.2)
    client.close()


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """A pool on plain HTTP on 127.0.0.1, with one provider agent training
    for it (and validating)."""
    root = tmp_path_factory.mktemp("gradpool")
    p = start_pool(root / "pool")
    rig, _ = spawn([
        "provider", "--pool", p.url, "--data-dir", str(root / "rig-1"),
        "--name", "rig-1", "--price-xmr-per-hour", "0.001", "--validate",
    ])
    try:
        wait_for_provider(p, "rig-1", rig)
        yield p
    finally:
        rig.stop()
        p.process.stop()


@pytest.fixture(scope="session")
def tls_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """A pool over TLS with a self-signed certificate, no providers."""
    p = start_pool(tmp_path_factory.mktemp("gradpool-tls") / "pool", tls=True)
    try:
        yield p
    finally:
        p.process.stop()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The first 20,000 characters of tinyshakespeare."""
    text = (REPO / "data" / "tinyshakespeare.txt").read_text()[:20_000]
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    path = tmp_path / "iris.csv"
    shutil.copy(REPO / "data" / "iris.csv", path)
    return path
