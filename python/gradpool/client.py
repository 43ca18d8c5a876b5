"""A customer's client of a gradpool pool.

>>> from gradpool import Client
>>> c = Client("https://pool:7443", api_key="gp_…", fingerprint="sha256:…")
>>> job = c.submit("spec.toml", data="corpus.txt")
>>> for ev in job.events():
...     print(ev.step, ev.loss)
>>> job.wait()
>>> job.fetch("out/")

Every method is a plain, blocking HTTP call (``httpx``). What the pool
refuses raises :class:`~gradpool.errors.PoolError` with its code; what never
reached it, :class:`~gradpool.errors.Unreachable`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union
from urllib.parse import urlsplit

import httpx

from . import _tls, _toml
from .errors import (
    CertificateMismatch,
    GradpoolError,
    JobFailed,
    PoolError,
    Unreachable,
    pool_error,
)
from .types import (
    FINAL_STATUSES,
    Account,
    Balance,
    Booking,
    DepositAddress,
    Event,
    Payout,
    PoolInfo,
    Provider,
    Round,
    Segment,
    Verdict,
    build,
    format_xmr,
)

Spec = Union[str, "os.PathLike[str]", Mapping[str, Any]]

# GETs a busy pool (503, 429) answered are tried this many times in all.
_ATTEMPTS = 4
# The longest wait between them, whatever Retry-After says.
_MAX_BACKOFF = 10.0
_CHUNK = 1 << 20


class Client:
    """A client of the pool at ``pool`` (``https://host:7443``, or
    ``http://127.0.0.1:7070`` on this machine).

    ``fingerprint`` pins the pool's certificate (``sha256:…``, as a pool
    started with ``--tls-self-signed`` prints it); without it an
    ``https://`` pool's certificate must be signed by an authority this
    machine trusts. Plain ``http://`` to another machine is refused unless
    ``allow_plain_http``: keys and data would cross the network in the clear.
    """

    def __init__(
        self,
        pool: str,
        api_key: Optional[str] = None,
        *,
        fingerprint: Optional[str] = None,
        allow_plain_http: bool = False,
        timeout: float = 30.0,
        binary: Optional[str] = None,
    ) -> None:
        self.url = pool.strip().rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GradpoolError(
                f"pool URL {pool!r}: expected like https://pool.example:7443"
            )
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._https = parts.scheme == "https"
        if not self._https and not (allow_plain_http or _tls.is_loopback(self._host)):
            raise GradpoolError(
                f"plain http:// to {self._host} sends keys and data in the clear; use "
                "https:// (a pool started with --tls-self-signed or --tls-cert), or "
                "pass allow_plain_http=True"
            )
        self.fingerprint = _tls.parse_fingerprint(fingerprint) if fingerprint else None
        if fingerprint and not self._https:
            raise GradpoolError("a fingerprint pins a certificate: the pool URL must be https://")
        self.api_key = api_key
        self.account_id: Optional[str] = None
        self.timeout = timeout
        self.binary = binary
        self._http: Optional[httpx.Client] = None

    # ----------------------------------------------------------- transport

    def _client(self) -> httpx.Client:
        if self._http is None:
            verify: Union[bool, ssl.SSLContext] = True
            if self.fingerprint:
                verify = _tls.pinned_context(
                    self.url, self._host, self._port, self.fingerprint, self.timeout
                )
            headers = {"user-agent": "gradpool-python"}
            if self.api_key:
                headers["authorization"] = f"Bearer {self.api_key}"
            self._http = httpx.Client(
                base_url=self.url,
                headers=headers,
                verify=verify,
                timeout=httpx.Timeout(self.timeout, connect=10.0),
            )
        return self._http

    def close(self) -> None:
        """Closes the client's connections."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, e: Exception) -> GradpoolError:
        """What a request that got no answer means: a refused certificate,
        said plainly, or the transport's error."""
        if self._https and _is_certificate_error(e):
            if self.fingerprint:
                try:
                    _, got = _tls.peer_certificate(self.url, self._host, self._port, self.timeout)
                except Unreachable as again:
                    return again
                if got != self.fingerprint:
                    return CertificateMismatch(self.url, self.fingerprint, got)
            return Unreachable(self.url, f"TLS: {e}")
        return Unreachable(self.url, str(e) or type(e).__name__)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        content: Any = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> httpx.Response:
        """One request to the pool; an error answer raises :class:`PoolError`."""
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self._client().request(
                    method, path, json=json_body, params=params, content=content, headers=headers
                )
            except httpx.TransportError as e:
                raise self._unreachable(e) from e
            except ssl.SSLError as e:
                raise self._unreachable(e) from e
            if r.status_code < 400:
                return r
            error = _error_of(r)
            retryable = method in ("GET", "HEAD") and r.status_code in (429, 503)
            if not retryable or attempt >= _ATTEMPTS:
                raise error
            time.sleep(min(error.retry_after or 2.0**attempt / 4, _MAX_BACKOFF))

    def _get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def _post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {}).json()

    # ------------------------------------------------------------ accounts

    @classmethod
    def create_account(
        cls,
        pool: str,
        name: str,
        **kwargs: Any,
    ) -> "Client":
        """Opens an account on a pool that takes sign-ups; a client with its
        key (``client.api_key``, shown once: keep it) and ``account_id``."""
        anonymous = cls(pool, **kwargs)
        try:
            created = anonymous._post("/v1/accounts", {"name": name})
        finally:
            anonymous.close()
        client = cls(pool, api_key=created["api_key"], **kwargs)
        client.account_id = created["account_id"]
        return client

    def account(self) -> Account:
        """This key's account."""
        return build(Account, self._get("/v1/account"))

    def balance(self) -> Balance:
        """Available, in escrow and on its way out, in piconero."""
        return build(Balance, self._get("/v1/account/balance"))

    def deposit_address(self) -> DepositAddress:
        """The account's own Monero subaddress (a Monero pool)."""
        return build(DepositAddress, self._get("/v1/account/deposit"))

    def faucet(self, piconero: int) -> Balance:
        """Free money on a dev pool (no Monero); the new balance."""
        return build(Balance, self._post("/v1/account/faucet", {"amount": _amount(piconero)}))

    def withdraw(self, to: str, piconero: int, idempotency_key: Optional[str] = None) -> Payout:
        """Sends ``piconero`` of the available balance to the Monero address
        ``to``. The same ``idempotency_key`` twice withdraws once."""
        body = {
            "to": to,
            "amount": _amount(piconero),
            "idempotency_key": idempotency_key or secrets.token_hex(16),
        }
        return build(Payout, self._post("/v1/account/withdraw", body))

    # ---------------------------------------------------------------- pool

    def pool(self) -> PoolInfo:
        """The pool's terms and prices (anyone may ask)."""
        return build(PoolInfo, self._get("/v1/pool"))

    def providers(self) -> List[Provider]:
        """Every provider: status, hardware, price, reputation."""
        return [build(Provider, p) for p in self._get("/v1/providers")]

    # ------------------------------------------------------------ bookings

    def book(
        self,
        gpus: int,
        start: str,
        until: str,
        min_score: Optional[float] = None,
    ) -> Booking:
        """Reserves ``gpus`` providers from ``start`` to ``until`` (RFC 3339);
        the window's price is held in escrow."""
        body: Dict[str, Any] = {"gpus": gpus, "from": start, "until": until}
        if min_score is not None:
            body["min_score"] = min_score
        return build(Booking, self.request("POST", "/v1/bookings", json_body=body).json())

    def bookings(self) -> List[Booking]:
        return [build(Booking, b) for b in self._get("/v1/bookings")]

    def cancel_booking(self, booking_id: str) -> Booking:
        return build(Booking, self._post(f"/v1/bookings/{_segment(booking_id)}/cancel"))

    # ---------------------------------------------------------------- jobs

    def jobs(self) -> List["Job"]:
        """This account's jobs, newest first."""
        return [Job(self, v) for v in self._get("/v1/jobs")]

    def job(self, job_id: str) -> "Job":
        """One of this account's jobs."""
        return Job(self, self._get(f"/v1/jobs/{_segment(job_id)}"))

    def submit(
        self,
        spec: Spec,
        data: Union[str, "os.PathLike[str]", None] = None,
        *,
        name: Optional[str] = None,
        steps: Optional[int] = None,
        budget: Optional[int] = None,
        max_price: Optional[int] = None,
        booking: Optional[str] = None,
    ) -> "Job":
        """Uploads the data and submits a job.

        ``spec`` is a spec file (TOML) or the same as a dict. ``data``
        overrides the spec's ``data.file`` (read relative to the spec file).
        ``name``, ``steps``, ``budget`` and ``max_price`` (piconero) override
        the spec's, as ``gradpool job submit --name/--steps/--budget/--max-price``
        do. The pool checks the spec; a refused one raises
        :class:`~gradpool.errors.InvalidSpec` naming the field.
        """
        text, table, base = _spec_of(spec)
        overrides = {"name": name, "steps": steps, "budget": budget, "max_price": max_price}
        if any(v is not None for v in overrides.values()):
            table = _override(table, **overrides)
            text = _toml.dumps(table)
        if "privacy" in table or _is_container(table):
            raise GradpoolError(
                "container and confidential jobs are submitted with the gradpool CLI "
                "(gradpool job submit), which builds the image or seals the data here"
            )
        path = _data_path(data, table, base)
        sha = _sha256_file(path)
        pinned = table.get("data", {}).get("sha256")
        if pinned and str(pinned).lower() != sha:
            raise GradpoolError(f"data.sha256: the spec pins {pinned}, but {path} is {sha}")
        self.upload(path, sha)
        body: Dict[str, Any] = {"spec_toml": text, "data_sha256": sha}
        if booking:
            body["booking"] = booking
        return Job(self, self.request("POST", "/v1/jobs", json_body=body).json())

    def upload(self, path: Union[str, "os.PathLike[str]"], sha256: Optional[str] = None) -> str:
        """Uploads a file as a blob named by its SHA-256 (nothing when the
        pool has it already); returns the digest."""
        path = Path(path)
        sha = sha256 or _sha256_file(path)
        try:
            self.request("HEAD", f"/v1/blobs/{sha}")
            return sha
        except PoolError as e:
            if e.status != 404:
                raise
        size = path.stat().st_size
        with path.open("rb") as f:
            self.request(
                "PUT",
                f"/v1/blobs/{sha}",
                content=_chunks(f),
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(size),
                },
            )
        return sha

    def download(self, sha256: str, dest: Union[str, "os.PathLike[str]"]) -> Path:
        """Downloads a blob to ``dest``, checking its digest; a partial or
        wrong download leaves nothing at ``dest``."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        try:
            with self._client().stream("GET", f"/v1/blobs/{_segment(sha256)}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error_of(r)
                with part.open("wb") as f:
                    for chunk in r.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.TransportError as e:
            part.unlink(missing_ok=True)
            raise self._unreachable(e) from e
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise GradpoolError(
                f"blob {sha256} arrived as {digest.hexdigest()}: the download was "
                "damaged or cut short, nothing was kept"
            )
        os.replace(part, dest)
        return dest

    def _binary(self) -> str:
        found = self.binary or os.environ.get("GRADPOOL_BIN") or shutil.which("gradpool")
        if not found:
            raise GradpoolError(
                "the gradpool binary is not on PATH (set GRADPOOL_BIN or pass binary=…)"
            )
        return found

    def _cli_env(self) -> Dict[str, str]:
        """The environment the CLI reads this client's pool and key from
        (the key kept off the command line)."""
        env = dict(os.environ)
        env["GRADPOOL_POOL"] = self.url
        if self.api_key:
            env["GRADPOOL_API_KEY"] = self.api_key
        if self.fingerprint:
            env["GRADPOOL_POOL_FINGERPRINT"] = self.fingerprint
        return env


class Job:
    """A job of this account: its last known state in attributes
    (``status``, ``step``, ``last_loss``, ``spent``, …; see
    :meth:`refresh`), and what can be done with it."""

    id: str
    name: str
    status: str
    steps: int
    step: int
    segments_done: int
    segments_total: int
    last_loss: Optional[float]
    eval_loss: Optional[float]
    checkpoint_sha256: Optional[str]
    error: Optional[str]
    budget: int
    spent: int
    escrow: int
    provider: Optional[str]
    providers: int
    spec_toml: str

    def __init__(self, client: Client, view: Mapping[str, Any]) -> None:
        self.client = client
        self._update(view)

    def _update(self, view: Mapping[str, Any]) -> None:
        self.raw: Dict[str, Any] = dict(view)
        for k in (
            "id", "name", "status", "steps", "step", "segments_done", "segments_total",
            "last_loss", "eval_loss", "checkpoint_sha256", "error", "budget", "spent",
            "escrow", "provider", "providers", "spec_toml",
        ):
            setattr(self, k, view.get(k))

    def __repr__(self) -> str:
        return (
            f"Job({self.id!r}, status={self.status!r}, step={self.step}/{self.steps}, "
            f"last_loss={self.last_loss}, spent={format_xmr(self.spent or 0)} XMR)"
        )

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, unverified, failed or cancelled)."""
        return self.status in FINAL_STATUSES

    def _path(self, tail: str = "") -> str:
        return f"/v1/jobs/{_segment(self.id)}{tail}"

    def spec(self) -> Dict[str, Any]:
        """The job's spec, as submitted, as a dict."""
        import tomllib

        return tomllib.loads(self.spec_toml or "")

    def refresh(self) -> "Job":
        """Reads the job's state again."""
        self._update(self.client._get(self._path()))
        return self

    def cancel(self) -> "Job":
        """Cancels the job; the unspent budget comes back."""
        self._update(self.client._post(self._path("/cancel")))
        return self

    def segments(self) -> List[Segment]:
        """Its committed segments: who trained which steps, their losses."""
        return [build(Segment, s) for s in self.client._get(self._path("/segments"))]

    def verdicts(self) -> List[Verdict]:
        """Its audits and their verdicts."""
        return [build(Verdict, v) for v in self.client._get(self._path("/verdicts"))]

    def rounds(self) -> List[Round]:
        """A parallel job's rounds."""
        return [build(Round, r) for r in self.client._get(self._path("/rounds"))]

    def events(self, after: int = 0, follow: bool = True) -> Iterator[Event]:
        """The job's events after event ``after``, live, until it ends.

        A dropped connection is taken up again where it left off. With
        ``follow=False`` only the events so far (of an ended job: all).
        """
        last = after
        while True:
            ended = False
            for event in self._event_stream(last, closing=not follow):
                last = event.id
                yield event
                ended = ended or (event.type == "status" and event.status in FINAL_STATUSES)
            if not follow:
                return
            if ended or self.refresh().done:
                # The stream closes at the final status; what follows it
                # (`settled`) is read in one more pass, which ends at once.
                for event in self._event_stream(last, closing=True):
                    last = event.id
                    yield event
                return
            time.sleep(0.5)

    def _event_stream(self, after: int, closing: bool = False) -> Iterator[Event]:
        """One connection to the event stream, until it closes (or, with
        ``closing``, until it has nothing more to give at once)."""
        client = self.client._client()
        timeout = httpx.Timeout(connect=10.0, read=2.0 if closing else 60.0, write=30.0, pool=30.0)
        try:
            with client.stream(
                "GET", self._path("/events"), params={"after": after}, timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error_of(r)
                for data in _sse_data(r.iter_lines()):
                    yield Event.from_json(json.loads(data))
        except httpx.ReadTimeout:
            if closing:
                return
            # Silence past the keep-alives: connect again where it left off.
        except httpx.TransportError as e:
            if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
                raise self.client._unreachable(e) from e
            # The connection dropped mid-stream: the caller connects again.

    def wait(self, timeout: Optional[float] = None, poll: float = 1.0) -> "Job":
        """Waits until the job ends; raises :class:`~gradpool.errors.JobFailed`
        if it failed, ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} still {self.status} (step {self.step} of {self.steps}) "
                    f"after {timeout} s"
                )
            time.sleep(poll)
        if self.status == "failed":
            raise JobFailed(self.id, self.error)
        return self

    def fetch(self, out: Union[str, "os.PathLike[str]"], checkpoint: bool = False) -> Path:
        """Downloads the last accepted checkpoint and writes the model as
        ``out/model.safetensors`` (weights only, with the config and
        vocabulary in its metadata) and ``out/summary.json``, as
        ``gradpool job fetch`` does; returns the model's path. With
        ``checkpoint``, the full checkpoint is kept too."""
        from . import model as _model

        self.refresh()
        if not self.checkpoint_sha256:
            raise GradpoolError(
                f"job {self.id} is {self.status} and has no accepted checkpoint yet "
                f"(step 0 of {self.steps})"
            )
        spec = self.spec()
        if "privacy" in spec:
            raise GradpoolError(
                "a confidential job's checkpoint is sealed: fetch it with the gradpool CLI, "
                "which holds its key (gradpool job fetch)"
            )
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt = self.client.download(self.checkpoint_sha256, out / "checkpoint.safetensors")
        model = out / "model.safetensors"
        _model.export(ckpt.read_bytes(), model, container=_is_container(spec))
        if not checkpoint:
            ckpt.unlink()
        summary = {
            "job_id": self.id,
            "name": self.name,
            "status": self.status,
            "step": self.step,
            "steps": self.steps,
            "segments_done": self.segments_done,
            "segments_total": self.segments_total,
            "checkpoint_sha256": self.checkpoint_sha256,
            "loss": self.last_loss,
            "eval_loss": self.eval_loss,
            "audits_unserved": self.raw.get("audits_unserved", 0),
            "audits_waiting": self.raw.get("audits_waiting", 0),
            "spent_piconero": self.spent,
            "budget_piconero": self.budget,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return model

    def verify(self, segments: int = 3, threads: Optional[int] = None) -> Dict[str, Any]:
        """Checks the pool's claims with the gradpool binary (``gradpool job
        verify --json``): every commitment's signature and chain link, and
        ``segments`` random segments trained again here. Returns its report;
        ``report["pass"]`` says whether every check passed, ``report["segments"]``
        what each segment's checks found."""
        args = [self.client._binary(), "job", "verify", self.id, "--json",
                "--segments", str(segments)]
        if threads is not None:
            args += ["--threads", str(threads)]
        run = subprocess.run(args, env=self.client._cli_env(), capture_output=True, text=True)
        try:
            report: Dict[str, Any] = json.loads(run.stdout)
        except json.JSONDecodeError:
            raise GradpoolError(
                f"gradpool job verify failed (exit {run.returncode}): {run.stderr.strip()}"
            ) from None
        return report


# ------------------------------------------------------------------ helpers


def _is_certificate_error(e: BaseException) -> bool:
    seen = set()
    cur: Optional[BaseException] = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        if isinstance(cur, ssl.SSLError) and "CERTIFICATE" in str(cur).upper():
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _error_of(r: httpx.Response) -> PoolError:
    retry = r.headers.get("retry-after")
    try:
        retry_after: Optional[float] = float(retry) if retry else None
    except ValueError:
        retry_after = None
    try:
        body = r.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code = f"http_{r.status_code}"
        message = r.text.strip()[:300] or r.reason_phrase
    return pool_error(code, message, r.status_code, retry_after)


def _is_container(spec: Mapping[str, Any]) -> bool:
    model = spec.get("model")
    return isinstance(model, Mapping) and model.get("kind") == "container"


def _segment(s: str) -> str:
    """``s`` as one path segment: ids never hold a ``/``."""
    if not s or "/" in s or s in (".", ".."):
        raise GradpoolError(f"{s!r} is not an id")
    return s


def _amount(piconero: int) -> int:
    if isinstance(piconero, bool) or not isinstance(piconero, int) or piconero < 0:
        raise TypeError("amounts are whole piconero >= 0 (gradpool.xmr(\"0.5\") converts)")
    return piconero


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _chunks(f: Any) -> Iterator[bytes]:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        yield chunk


def _spec_of(spec: Spec) -> "tuple[str, Dict[str, Any], Optional[Path]]":
    """The spec's TOML text, its table, and the directory a relative
    ``data.file`` is read from."""
    import tomllib

    if isinstance(spec, Mapping):
        text = _toml.dumps(spec)
        return text, tomllib.loads(text), None
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as e:
        raise GradpoolError(f"cannot read the spec {path}: {e}") from e
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GradpoolError(f"spec {path} is not TOML: {e}") from e
    return text, table, path.parent


def _override(table: Dict[str, Any], **o: Optional[Any]) -> Dict[str, Any]:
    table = json.loads(json.dumps(table, default=str))
    if o["name"] is not None:
        table["name"] = o["name"]
    if o["steps"] is not None:
        train = table.setdefault("train", {})
        train["steps"] = o["steps"]
        if train.get("checkpoint_every", 0) > o["steps"]:
            train["checkpoint_every"] = o["steps"]
    if o["budget"] is not None:
        table.setdefault("budget", {})["total_xmr"] = format_xmr(_amount(o["budget"]))
    if o["max_price"] is not None:
        table.setdefault("budget", {})["max_price_xmr_per_hour"] = format_xmr(
            _amount(o["max_price"])
        )
    return table


def _data_path(
    data: Union[str, "os.PathLike[str]", None],
    table: Mapping[str, Any],
    base: Optional[Path],
) -> Path:
    if data is not None:
        return Path(data)
    f = table.get("data", {}).get("file")
    if not f:
        raise GradpoolError("no data: pass data=FILE or set data.file in the spec")
    p = Path(f)
    return base / p if base is not None and not p.is_absolute() else p


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (keep-alive comments skipped)."""
    data: List[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
    if data:
        yield "\n".join(data)
