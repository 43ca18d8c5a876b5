"""A job's checkpoint turned into its model file, as ``gradpool job fetch``
writes it.

A built-in model's checkpoint (``gradpool-checkpoint-v1``, or a parallel
job's ``gradpool-global-v1``/``gradpool-weights-v1``) holds each parameter
as ``param.NAME`` beside the optimizer's state; the model file
(``gradpool-model-v1``) keeps the parameters under their own names, and the
checkpoint's metadata: the model's config (``model``, JSON) and the data's
vocabulary or features. A container job's checkpoint keeps its script's
weights as ``model.NAME``; its model file (``gradpool-container-model-v1``)
holds them under their ``state_dict`` names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

from . import safetensors as st

MODEL_FORMAT = "gradpool-model-v1"
CONTAINER_MODEL_FORMAT = "gradpool-container-model-v1"
_NATIVE = ("gradpool-checkpoint-v1", "gradpool-global-v1", "gradpool-weights-v1")


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint a model can be taken from."""


def model_bytes(checkpoint: bytes, container: bool = False) -> bytes:
    """The model file of a checkpoint's bytes."""
    try:
        tensors, metadata = st.load(checkpoint)
    except st.SafetensorsError as e:
        raise CheckpointError(f"not a safetensors file: {e}") from None
    if container:
        prefix = "model." if any(n.startswith("model.") for n in tensors) else "param."
        weights = _strip(tensors, prefix)
        return st.dump(weights, {"format": CONTAINER_MODEL_FORMAT})
    fmt = metadata.get("format")
    if fmt not in _NATIVE:
        raise CheckpointError(f"format {fmt!r} is not a gradpool checkpoint")
    if "model" not in metadata:
        raise CheckpointError("the checkpoint's metadata has no model config")
    weights = _strip(tensors, "param.")
    md = {k: v for k, v in metadata.items() if k not in ("round", "workers")}
    md["format"] = MODEL_FORMAT
    return st.dump(weights, md)


def export(
    checkpoint: bytes, out: Union[str, "os.PathLike[str]"], container: bool = False
) -> Path:
    """Writes the model of ``checkpoint`` to ``out`` (whole, or not at all)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(model_bytes(checkpoint, container))
    os.replace(tmp, out)
    return out


def _strip(tensors: Dict[str, st.Raw], prefix: str) -> Dict[str, st.Raw]:
    weights = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"it holds no {prefix}* tensor")
    return weights
