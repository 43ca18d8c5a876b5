"""gradpool's Python package.

- :class:`gradpool.Client`: a customer's client of a pool — accounts,
  jobs (submit, live events, wait, fetch, verify), providers, bookings.
- ``gradpool.torch``: a model trained on gradpool as a PyTorch module.
- ``gradpool.segment``: the segment contract of a container job, used by
  the training script inside its image.
- ``gradpool.safetensors``: checkpoints read and written without
  third-party packages.

The client needs ``httpx`` (and ``gradpool.torch`` needs ``torch`` and
``safetensors``); they are imported when first used, so that
``gradpool.segment`` works in an image that has none of them.
"""

from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "Client": "client",
    "Job": "client",
    "GradpoolError": "errors",
    "PoolError": "errors",
    "Unauthorized": "errors",
    "NotFound": "errors",
    "InvalidSpec": "errors",
    "InsufficientFunds": "errors",
    "Unreachable": "errors",
    "CertificateMismatch": "errors",
    "JobFailed": "errors",
    "Event": "types",
    "Provider": "types",
    "Balance": "types",
    "xmr": "types",
    "format_xmr": "types",
}

# Submodules reachable as attributes (`gradpool.torch.load(...)` after
# `import gradpool`), imported on first use.
_SUBMODULES = {"client", "errors", "model", "safetensors", "segment", "torch", "types"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradpool' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
