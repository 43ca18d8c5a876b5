"""The client end to end against a real pool and provider agent: submit,
live events, wait, fetch, verify, and the model in PyTorch with the native
runtime's logits."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

import gradpool
from gradpool import Client
from gradpool.errors import (
    CertificateMismatch,
    InvalidSpec,
    NotFound,
    PoolError,
    Unauthorized,
    Unreachable,
)

from conftest import Pool, binary

GPT_SPEC = {
    "name": "sdk-gpt",
    "model": {"kind": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
    "data": {"format": "text"},
    "train": {
        "seed": 7,
        "steps": 60,
        "batch_size": 8,
        "checkpoint_every": 20,
        "lr": 0.003,
        "warmup_steps": 5,
    },
    "budget": {"total_xmr": "0.01", "max_price_xmr_per_hour": "0.05"},
}


def customer(pool: Pool, name: str = "ada") -> Client:
    c = Client.create_account(pool.url, name)
    c.faucet(gradpool.xmr("1"))
    return c


def native_logits(model: Path, *args: str) -> "list[list[float]]":
    out = subprocess.run(
        [binary(), "logits", "--model", str(model), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["logits"]


def test_a_gpt_job_trains_streams_its_loss_and_loads_in_torch(
    pool: Pool, corpus: Path, tmp_path: Path
) -> None:
    import torch
    import gradpool.torch

    c = customer(pool)
    assert c.account().id == c.account_id
    job = c.submit(GPT_SPEC, data=corpus)
    assert job.id.startswith("job_") and job.status == "queued"
    assert job.budget == gradpool.xmr("0.01")

    events = list(job.events())
    kinds = [e.type for e in events]
    progress = [e for e in events if e.type == "progress"]
    checkpoints = [e for e in events if e.type == "checkpoint"]
    # Live loss, segment by segment, in order, and the job's end.
    assert progress and all(e.loss is not None and e.loss > 0 for e in progress)
    assert [e.step for e in progress] == sorted(e.step for e in progress)
    assert [e.step for e in checkpoints] == [20, 40, 60]
    assert [e.segment for e in checkpoints] == [0, 1, 2]
    assert "settled" in kinds and "payment" in kinds
    assert [e.id for e in events] == sorted({e.id for e in events})
    final = [e for e in events if e.type == "status"][-1]
    assert final.status == "succeeded"
    # Nothing came after the stream said the job ended.
    assert events[-1].id == max(e.id for e in job.events(follow=False))

    # Reading the stream again from an event id gives what followed it.
    again = list(job.events(after=checkpoints[0].id))
    assert [e.id for e in again] == [e.id for e in events if e.id > checkpoints[0].id]

    job.wait(timeout=60)
    assert job.status == "succeeded" and job.step == 60
    assert 0 < job.spent <= job.budget
    segments = job.segments()
    assert [(s.start_step, s.end_step) for s in segments] == [(0, 20), (20, 40), (40, 60)]
    assert all(s.provider == segments[0].provider for s in segments)
    assert job.raw["checkpoint_sha256"] == segments[-1].checkpoint_sha256

    model_path = job.fetch(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["step"] == 60
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()

    model = gradpool.torch.load(model_path)
    assert isinstance(model, gradpool.torch.GPT)
    text = "ROMEO: What light"
    with torch.no_grad():
        ours = model(model.encode(text).unsqueeze(0))[0]
    native = torch.tensor(native_logits(model_path, "--text", text))
    assert ours.shape == native.shape == (len(text), len(model.vocab))
    assert torch.allclose(ours, native, atol=1e-5, rtol=0), (ours - native).abs().max()

    report = job.verify(segments=1, threads=1)
    assert report["pass"] is True and report["replayed"] == 1, report
    assert len(report["segments"]) == 3


def test_an_mlp_job_loads_in_torch_with_the_native_logits(
    pool: Pool, iris: Path, tmp_path: Path
) -> None:
    import torch

    c = customer(pool, "grace")
    spec = Path(__file__).resolve().parents[2] / "examples" / "iris-mlp.toml"
    job = c.submit(spec, data=iris, steps=100, name="sdk-iris")
    assert job.name == "sdk-iris" and job.steps == 100
    job.wait(timeout=120)
    model_path = job.fetch(tmp_path / "iris", checkpoint=True)
    assert (tmp_path / "iris" / "checkpoint.safetensors").exists()

    model = gradpool.torch.load(model_path)
    assert isinstance(model, gradpool.torch.MLP)
    assert model.classes and len(model.features) == 4
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    with torch.no_grad():
        ours = model(model.standardize(torch.tensor(rows)))
    native = torch.tensor(
        native_logits(model_path, *[a for r in rows for a in ("--features", ",".join(map(str, r)))])
    )
    assert torch.allclose(ours, native, atol=1e-5, rtol=0), (ours - native).abs().max()


def test_the_account_the_pool_and_its_providers(pool: Pool) -> None:
    c = customer(pool, "linus")
    b = c.balance()
    assert b.available == gradpool.xmr("1") and b.escrowed == 0 and b.backend == "dev"
    info = c.pool()
    assert info.backend == "dev" and info.version
    providers = c.providers()
    assert [p.name for p in providers] == ["rig-1"]
    assert providers[0].status in ("idle", "sharing") and providers[0].validate
    assert isinstance(providers[0].hardware, dict)
    # A dev pool has no Monero wallet: the pool says so, with its code.
    with pytest.raises(PoolError) as e:
        c.deposit_address()
    assert e.value.code and e.value.status >= 400
    with pytest.raises(TypeError):
        gradpool.xmr(0.1)  # type: ignore[arg-type]
    assert gradpool.format_xmr(gradpool.xmr("0.25")) == "0.25"


def test_a_wrong_key_is_unauthorized(pool: Pool) -> None:
    c = Client(pool.url, api_key="gp_not_a_key")
    with pytest.raises(Unauthorized) as e:
        c.jobs()
    assert e.value.code == "unauthorized" and e.value.status == 401


def test_an_unknown_job_is_not_found(pool: Pool) -> None:
    c = customer(pool, "barbara")
    with pytest.raises(NotFound) as e:
        c.job("job_0000000000000000")
    assert e.value.code == "not_found" and "job_0000000000000000" in e.value.message


def test_a_bad_spec_names_its_field(pool: Pool, corpus: Path) -> None:
    c = customer(pool, "edsger")
    spec = json.loads(json.dumps(GPT_SPEC))
    spec["train"]["stepz"] = 10
    with pytest.raises(InvalidSpec) as e:
        c.submit(spec, data=corpus)
    assert e.value.code == "invalid_spec" and "stepz" in e.value.message
    assert c.jobs() == []


def test_an_unreachable_pool() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    c = Client(f"http://127.0.0.1:{port}", api_key="gp_x")
    with pytest.raises(Unreachable) as e:
        c.jobs()
    assert f"127.0.0.1:{port}" in str(e.value)


def test_plain_http_to_another_machine_is_refused() -> None:
    with pytest.raises(gradpool.GradpoolError, match="in the clear"):
        Client("http://pool.example:7070", api_key="gp_x")


def test_a_pinned_certificate_is_trusted_and_a_changed_one_refused(tls_pool: Pool) -> None:
    assert tls_pool.fingerprint and tls_pool.url.startswith("https://")
    c = Client.create_account(tls_pool.url, "ada", fingerprint=tls_pool.fingerprint)
    assert c.account().name == "ada"
    other = "sha256:" + "00" * 32
    with pytest.raises(CertificateMismatch) as e:
        Client(tls_pool.url, api_key=c.api_key, fingerprint=other).account()
    assert e.value.got == tls_pool.fingerprint and e.value.pinned == other
    # Without a pin, a self-signed certificate is not trusted at all.
    with pytest.raises(Unreachable, match="TLS"):
        Client(tls_pool.url, api_key=c.api_key).account()


def test_a_booking_holds_its_price_and_a_cancel_gives_it_back(pool: Pool) -> None:
    from datetime import datetime, timedelta, timezone

    c = customer(pool, "margaret")
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    until = start + timedelta(hours=1)
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    booking = c.book(1, iso(start), iso(until))
    assert booking.id.startswith("bk_") and booking.status == "reserved"
    assert booking.gpus == 1 and len(booking.providers) == 1
    # rig-1 asks 0.001 XMR an hour: the hour's price is held.
    assert booking.held == gradpool.xmr("0.001")
    assert c.balance().escrowed == booking.held
    assert [b.id for b in c.bookings()] == [booking.id]
    cancelled = c.cancel_booking(booking.id)
    assert cancelled.status == "cancelled"
    assert c.balance().escrowed == 0
    # Two GPUs from a pool of one: refused, saying why.
    with pytest.raises(PoolError) as e:
        c.book(2, iso(start), iso(until))
    assert e.value.code == "conflict" and "gpus" in e.value.message


def test_the_package_imports_what_is_used_and_no_more() -> None:
    import sys

    # The segment contract imports none of the client's dependencies: an
    # image installs the package with --no-deps.
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys, gradpool.segment; "
         "assert not {'httpx', 'safetensors', 'torch'} & set(sys.modules), sorted(sys.modules)"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    # The README's `gradpool.torch.load` after a bare `import gradpool`.
    run = subprocess.run(
        [sys.executable, "-c", "import gradpool; print(gradpool.torch.load.__name__, gradpool.Client.__name__)"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0 and run.stdout.split() == ["load", "Client"], run.stderr
