"""What the pool answers, as dataclasses.

Field names are the pool's wire names (``class`` and ``from`` become
``class_`` and ``from_``). Money is integer piconero (1 XMR =
10^12 piconero), never a float: :func:`xmr` turns ``"0.25"`` into
piconero and :func:`format_xmr` back. Every object keeps the pool's
whole answer in ``raw``, fields this version does not name included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar, Union

PICONERO_PER_XMR = 10**12

T = TypeVar("T")

_RENAMED = {"class": "class_", "from": "from_"}


def build(cls: Type[T], d: Mapping[str, Any]) -> T:
    """A ``cls`` from the pool's JSON object ``d``: known fields, ``raw`` = all."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = {}
    for k, v in d.items():
        k = _RENAMED.get(k, k)
        if k in names and k != "raw":
            kwargs[k] = v
    kwargs["raw"] = dict(d)
    return cls(**kwargs)


def xmr(amount: Union[str, int, Decimal]) -> int:
    """Piconero in ``amount`` XMR (``"0.25"``, ``Decimal("0.25")`` or ``1``).

    Floats are refused: 0.1 XMR as a float is not 0.1 XMR.
    """
    if isinstance(amount, bool) or isinstance(amount, float):
        raise TypeError("give XMR as a string or a Decimal (\"0.25\"), not a float")
    try:
        d = Decimal(str(amount).strip())
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not an amount of XMR") from None
    p = d * PICONERO_PER_XMR
    if not d.is_finite() or p != p.to_integral_value() or p < 0:
        raise ValueError(f"{amount!r} XMR is not a whole number of piconero >= 0")
    return int(p)


def format_xmr(piconero: int) -> str:
    """``piconero`` as XMR text, without trailing zeros (``"0.25"``)."""
    whole, frac = divmod(int(piconero), PICONERO_PER_XMR)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:012d}".rstrip("0")


@dataclass
class Account:
    id: str
    name: str
    created_at: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Balance:
    """A customer's money at the pool, in piconero."""

    account_id: str
    available: int
    escrowed: int
    withdrawing: int
    backend: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class DepositAddress:
    """Where to send Monero to fund the account (a Monero pool)."""

    address: str
    confirmations: int
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Payout:
    id: str
    status: str
    address: str
    amount: int
    txid: Optional[str] = None
    created_at: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PoolInfo:
    version: str
    backend: str
    network: str
    pool_fee_bps: int
    validator_fee_bps: int
    providers_connected: int
    jobs_open: int
    hardware_proof: bool
    median_provider_price_per_hour: Optional[int] = None
    median_job_price_per_hour: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Provider:
    """A provider as any customer sees it."""

    id: str
    name: str
    status: str
    class_: str
    last_seen: str
    segments_committed: int = 0
    price_per_hour: int = 0
    hardware: Dict[str, Any] = field(default_factory=dict)
    validate: bool = False
    train: bool = True
    containers: bool = False
    paused_reason: Optional[str] = None
    held: Optional[str] = None
    proven_gflops: Optional[float] = None
    transfer_rate: Optional[float] = None
    streak: int = 0
    faults: int = 0
    reputation: float = 0.0
    audit_probability: float = 0.0
    telemetry: Optional[Dict[str, Any]] = None
    tier: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Segment:
    """One committed segment of a job."""

    segment: int
    start_step: int
    end_step: int
    provider: str
    checkpoint_sha256: str
    loss_trace: List[float] = field(default_factory=list, repr=False)
    eval_loss: Optional[float] = None
    committed_at: str = ""
    status: str = "accepted"
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Verdict:
    """The outcome of one audit of a segment, with its evidence in ``raw``."""

    audit_id: str
    job_id: str
    segment: int
    reason: str
    outcome: str
    at_fault: Optional[str] = None
    opened_at: str = ""
    decided_at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Round:
    """One round of a parallel (DiLoCo) job."""

    round: int
    start_step: int
    end_step: int
    workers: List[Dict[str, Any]] = field(default_factory=list)
    wait_seconds: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Booking:
    """Providers reserved for a window."""

    id: str
    status: str
    gpus: int
    from_: str
    until: str
    providers: List[str] = field(default_factory=list)
    price_per_hour: int = 0
    held: int = 0
    min_score: Optional[float] = None
    created_at: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Event:
    """One entry of a job's event log.

    ``type`` is ``status``, ``assigned``, ``progress``, ``checkpoint``,
    ``payment``, ``audit``, ``verdict``, ``outer_step``, ``settled``, …;
    the fields a type does not carry are ``None``. ``data`` holds them all.
    """

    id: int
    job_id: str
    at: str
    type: str
    step: Optional[int] = None
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    tokens_per_sec: Optional[float] = None
    provider: Optional[str] = None
    segment: Optional[int] = None
    round: Optional[int] = None
    status: Optional[str] = None
    reason: Optional[str] = None
    outcome: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict, repr=False)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Event":
        names = {f.name for f in dataclasses.fields(Event)} - {"data"}
        kwargs = {k: v for k, v in d.items() if k in names}
        return Event(data=dict(d), **kwargs)


FINAL_STATUSES = frozenset({"succeeded", "unverified", "failed", "cancelled"})
