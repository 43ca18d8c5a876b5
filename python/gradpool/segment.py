"""The segment contract of a container job, from inside the container.

A container job's script trains one *segment* per run: steps
``[from, to)`` of the job, from the start checkpoint (absent for the first
segment) to an end checkpoint. The provider's agent runs it under podman
with:

- the job's data at ``/data`` (read-only), its files under ``/job``
  (read-only), the start checkpoint at ``/in`` (absent for the first
  segment);
- ``/out`` the only writable directory (with a tmpfs ``/tmp``): the
  checkpoint goes to ``/out/checkpoint.safetensors``, the loss trace to
  ``/out/trace.jsonl``, one line per step, read live by the agent;
- the environment: ``GRADPOOL_FROM``, ``GRADPOOL_TO``, ``GRADPOOL_STEPS``
  (the job's), ``GRADPOOL_SEED``, ``GRADPOOL_THREADS``, ``GRADPOOL_DEVICE``
  (``cpu`` or ``cuda``), for a parallel job ``GRADPOOL_WORKER`` and
  ``GRADPOOL_WORKERS`` (the worker slot and how many there are), and the
  spec's ``[train]`` values
  (``GRADPOOL_BATCH_SIZE``, ``GRADPOOL_LR``, ``GRADPOOL_MIN_LR``,
  ``GRADPOOL_WARMUP_STEPS``, ``GRADPOOL_WEIGHT_DECAY``,
  ``GRADPOOL_EVAL_FRACTION``).

A checkpoint holds everything resuming needs: the model's ``state_dict``
as ``model.<name>``, the optimizer's state as ``optim.<index>.<key>``, and
any extra tensors as ``extra.<name>``, with ``__metadata__`` ``format =
gradpool-container-v1`` and ``step``. The agent checks it (well-formed,
every float finite, the start checkpoint's names, dtypes and shapes) and
rewrites it in the one canonical encoding before hashing it.

Determinism: :meth:`Segment.determinism` seeds PyTorch from the job's
seed (call it before building the model, so the initial weights are the
seed's), turns on ``torch.use_deterministic_algorithms(True)``, fixes the
thread count and, on GPUs, ``CUBLAS_WORKSPACE_CONFIG``. Seed whatever a
step draws from :meth:`Segment.step_seed`, a function of ``(seed, step)``
alone, so a segment replays the same from any start.

Parallel jobs (a ``[parallel]`` table, DiLoCo): every worker of a round
starts from the round's averaged weights and its own optimizer state, the
agent composes that start at ``/in``. Each worker must draw its own data:
:meth:`Segment.step_seed` mixes the worker slot in, and
:meth:`Segment.shard` gives the worker's slice of a dataset. The first
round starts from the job's initial checkpoint (weights only, fresh
optimizer state), which ``gradpool job submit`` makes by running the
script for the empty step range ``[0, 0)``: build the model, call
:meth:`Segment.load`, train nothing, :meth:`Segment.save`. Keep the
weights F32: the outer step averages them in f32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional

from . import safetensors as st

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The checkpoint format the agent accepts.
FORMAT = "gradpool-container-v1"

# cuBLAS picks its reduction order from the workspace unless this is set
# before CUDA starts: set it as soon as the package is imported.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class SegmentError(RuntimeError):
    """The segment cannot go on: a missing variable, a checkpoint that does
    not fit the model, a step out of range."""


def _env(name: str, default: Optional[str] = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise SegmentError(f"{name} is not set: run this script as a gradpool container segment")
    return value


def _int(name: str, default: Optional[int] = None) -> int:
    raw = _env(name, None if default is None else str(default))
    try:
        return int(raw)
    except ValueError:
        raise SegmentError(f"{name}: an integer, got {raw!r}") from None


def _float(name: str, default: Optional[float] = None) -> float:
    raw = _env(name, None if default is None else repr(default))
    try:
        return float(raw)
    except ValueError:
        raise SegmentError(f"{name}: a number, got {raw!r}") from None


def step_seed(seed: int, step: int, worker: Optional[int] = None) -> int:
    """The seed of ``step`` of a job seeded ``seed``: the first 8 bytes of
    ``BLAKE2b("gradpool/step-seed/v1" ‖ seed ‖ step)`` (both little-endian
    u64), little-endian, as a non-negative 63-bit integer. A parallel job's
    worker ``w`` has its own: ``BLAKE2b("gradpool/worker-step-seed/v1" ‖
    seed ‖ step ‖ w)``, ``w`` a little-endian u32."""
    h = hashlib.blake2b(digest_size=8)
    h.update(b"gradpool/step-seed/v1" if worker is None else b"gradpool/worker-step-seed/v1")
    h.update(int(seed).to_bytes(8, "little", signed=False))
    h.update(int(step).to_bytes(8, "little", signed=False))
    if worker is not None:
        h.update(int(worker).to_bytes(4, "little", signed=False))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


@dataclass
class Segment:
    """One segment's settings and paths; :func:`from_env` reads them."""

    start: int
    end: int
    total_steps: int
    seed: int
    threads: int
    device: str
    batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    eval_fraction: float
    worker: Optional[int] = None
    workers: int = 1
    data: str = "/data"
    job_files: str = "/job"
    checkpoint_in: str = "/in"
    checkpoint_out: str = "/out/checkpoint.safetensors"
    trace: str = "/out/trace.jsonl"
    _trace_file: Optional[IO[str]] = None

    def steps(self) -> range:
        """The steps this segment trains: ``range(from, to)`` (empty when
        the initial checkpoint is made)."""
        return range(self.start, self.end)

    def step_seed(self, step: int) -> int:
        """The seed of ``step`` (:func:`step_seed` of the job's seed and,
        in a parallel job, the worker slot)."""
        return step_seed(self.seed, step, self.worker)

    def shard(self, n: int) -> range:
        """This worker's slice of ``n`` items: all of them unless the job
        is parallel, else the ``worker``-th of ``workers`` near-equal
        contiguous slices."""
        if self.worker is None:
            return range(n)
        return range(n * self.worker // self.workers, n * (self.worker + 1) // self.workers)

    def generator(self, step: int) -> "torch.Generator":
        """A CPU ``torch.Generator`` seeded for ``step``."""
        import torch

        return torch.Generator().manual_seed(self.step_seed(step))

    def lr_at(self, step: int) -> float:
        """The native runtime's schedule: linear warm-up over
        ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        if span <= 0:
            return self.min_lr
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def determinism(self) -> None:
        """Seeds PyTorch with the job's seed and makes it deterministic:
        ``torch.use_deterministic_algorithms(True)``, ``threads`` intra-op
        threads and one inter-op thread, cuDNN's benchmark off."""
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(self.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set: PyTorch allows it once, before parallel work
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.manual_seed(self.seed)

    def has_start(self) -> bool:
        """Whether a start checkpoint was given (every segment but the first)."""
        return os.path.exists(self.checkpoint_in)

    def load(
        self,
        model: "torch.nn.Module",
        optimizer: Optional["torch.optim.Optimizer"] = None,
    ) -> Dict[str, "torch.Tensor"]:
        """Loads the start checkpoint into ``model`` (strictly: every name
        and shape) and ``optimizer``; returns its extra tensors. Does
        nothing and returns ``{}`` for the first segment."""
        if not self.has_start():
            if self.start != 0:
                raise SegmentError(f"no start checkpoint at {self.checkpoint_in} for step {self.start}")
            return {}
        with open(self.checkpoint_in, "rb") as f:
            tensors, metadata = st.load(f.read())
        if metadata.get("format") != FORMAT or metadata.get("step") != str(self.start):
            raise SegmentError(
                f"{self.checkpoint_in}: expected a {FORMAT} checkpoint at step {self.start}, "
                f"got {metadata.get('format')!r} at step {metadata.get('step')!r}"
            )
        return _restore(tensors, metadata, model, optimizer)

    def save(
        self,
        model: "torch.nn.Module",
        optimizer: Optional["torch.optim.Optimizer"] = None,
        extra: Optional[Mapping[str, "torch.Tensor"]] = None,
    ) -> None:
        """Writes the end checkpoint: the model's ``state_dict``, the
        optimizer's state and ``extra``, at step ``to``."""
        tensors: Dict[str, st.Raw] = {}
        scalars: Dict[str, str] = {}
        for name, t in model.state_dict().items():
            tensors[f"model.{name}"] = _raw(t)
        if optimizer is not None:
            for index, state in optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    name = f"optim.{index}.{key}"
                    tensors[name], kind = _raw_value(value)
                    if kind is not None:
                        scalars[name] = kind
        for name, t in (extra or {}).items():
            tensors[f"extra.{name}"] = _raw(t)
        metadata = {"format": FORMAT, "step": str(self.end)}
        if scalars:
            metadata["scalars"] = json.dumps(scalars, sort_keys=True)
        data = st.dump(tensors, metadata)
        tmp = self.checkpoint_out + ".partial"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.checkpoint_out)

    def log(self, step: int, loss: float) -> None:
        """Records the loss of ``step`` on the trace the agent reads live
        (``job watch`` shows it). Log every step, in order."""
        if not self.start <= step < self.end:
            raise SegmentError(f"step {step} is outside this segment's [{self.start}, {self.end})")
        self._write({"step": int(step), "loss": float(loss)})

    def log_eval(self, loss: float) -> None:
        """Records the loss on the job's held-out data at the end checkpoint."""
        self._write({"eval_loss": float(loss)})

    def _write(self, line: Dict[str, Any]) -> None:
        if self._trace_file is None:
            self._trace_file = open(self.trace, "a", encoding="utf-8")
        self._trace_file.write(json.dumps(line) + "\n")
        self._trace_file.flush()


def from_env() -> Segment:
    """The segment the agent asked for, from ``GRADPOOL_*`` variables."""
    start, end = _int("GRADPOOL_FROM"), _int("GRADPOOL_TO")
    if not 0 <= start <= end:
        raise SegmentError(f"GRADPOOL_FROM/GRADPOOL_TO: a negative range [{start}, {end})")
    worker: Optional[int] = None
    workers = 1
    if "GRADPOOL_WORKER" in os.environ:
        worker, workers = _int("GRADPOOL_WORKER"), _int("GRADPOOL_WORKERS")
        if not 0 <= worker < workers:
            raise SegmentError(f"GRADPOOL_WORKER: {worker} is not a slot of {workers} workers")
    return Segment(
        start=start,
        end=end,
        total_steps=_int("GRADPOOL_STEPS", end),
        seed=_int("GRADPOOL_SEED"),
        threads=max(1, _int("GRADPOOL_THREADS", 1)),
        device=_env("GRADPOOL_DEVICE", "cpu"),
        batch_size=_int("GRADPOOL_BATCH_SIZE", 1),
        lr=_float("GRADPOOL_LR", 1e-3),
        min_lr=_float("GRADPOOL_MIN_LR", 0.0),
        warmup_steps=_int("GRADPOOL_WARMUP_STEPS", 0),
        weight_decay=_float("GRADPOOL_WEIGHT_DECAY", 0.0),
        eval_fraction=_float("GRADPOOL_EVAL_FRACTION", 0.0),
        worker=worker,
        workers=workers,
        data=_env("GRADPOOL_DATA", "/data"),
        job_files=_env("GRADPOOL_JOB_FILES", "/job"),
        checkpoint_in=_env("GRADPOOL_CHECKPOINT_IN", "/in"),
        checkpoint_out=_env("GRADPOOL_CHECKPOINT_OUT", "/out/checkpoint.safetensors"),
        trace=_env("GRADPOOL_TRACE", "/out/trace.jsonl"),
    )


# PyTorch dtypes and their safetensors names.
def _dtypes() -> Dict[Any, str]:
    import torch

    return {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }


def _raw(t: "torch.Tensor") -> st.Raw:
    import torch

    names = _dtypes()
    if t.dtype not in names:
        raise SegmentError(f"a {t.dtype} tensor cannot go in a checkpoint")
    t = t.detach().to("cpu").contiguous()
    flat = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return st.Raw(names[t.dtype], tuple(t.shape), flat.numpy().tobytes())


def _raw_value(value: Any) -> "tuple[st.Raw, Optional[str]]":
    """A tensor, or a Python number stored as a 0-d F64 and remembered."""
    import torch

    if isinstance(value, torch.Tensor):
        return _raw(value), None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SegmentError(f"optimizer state of type {type(value).__name__} cannot go in a checkpoint")
    kind = "int" if isinstance(value, int) else "float"
    return _raw(torch.tensor(float(value), dtype=torch.float64)), kind


def _tensor(raw: st.Raw) -> "torch.Tensor":
    import torch

    by_name = {v: k for k, v in _dtypes().items()}
    dtype = by_name[raw.dtype]
    if not raw.data:
        return torch.empty(raw.shape, dtype=dtype)
    if dtype == torch.bfloat16:
        flat = torch.frombuffer(bytearray(raw.data), dtype=torch.int16).view(torch.bfloat16)
    else:
        flat = torch.frombuffer(bytearray(raw.data), dtype=dtype)
    return flat.reshape(raw.shape)


def _restore(
    tensors: Mapping[str, st.Raw],
    metadata: Mapping[str, str],
    model: "torch.nn.Module",
    optimizer: Optional["torch.optim.Optimizer"],
) -> Dict[str, "torch.Tensor"]:
    scalars = json.loads(metadata.get("scalars", "{}"))
    weights: Dict[str, Any] = {}
    state: Dict[int, Dict[str, Any]] = {}
    extra: Dict[str, Any] = {}
    for name, raw in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "model":
            weights[rest] = _tensor(raw)
        elif kind == "optim":
            index, _, key = rest.partition(".")
            value: Any = _tensor(raw)
            if name in scalars:
                value = int(value.item()) if scalars[name] == "int" else float(value.item())
            state.setdefault(int(index), {})[key] = value
        elif kind == "extra":
            extra[rest] = _tensor(raw)
        else:
            raise SegmentError(f"checkpoint tensor {name!r}: not model.*, optim.* or extra.*")
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    elif state:
        raise SegmentError("the checkpoint holds optimizer state but no optimizer was given")
    return extra
