"""A model trained on gradpool as a PyTorch module.

>>> import gradpool.torch
>>> model = gradpool.torch.load("out/model.safetensors")
>>> logits = model(model.encode("ROMEO:").unsqueeze(0))   # a GPT

:func:`load` rebuilds the native GPT and MLP from a model file written by
``gradpool job fetch`` (or :meth:`gradpool.Job.fetch`): the config and the
vocabulary or CSV features come from its metadata, the weights from its
tensors. The modules compute what the native runtime computes — LayerNorm
with eps 1e-5, exact (erf) GELU, causal softmax attention, ReLU between an
MLP's layers — so their logits agree with it.

Native linear weights are stored ``[in, out]`` (``y = x W + b``); here they
are transposed into ``nn.Linear``'s ``[out, in]``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from safetensors import safe_open
from torch import nn

from .model import MODEL_FORMAT

__all__ = ["GPT", "MLP", "load"]

LAYER_NORM_EPS = 1e-5


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hd = c // self.n_head
        qkv = self.qkv(x).reshape(b, t, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))


class FeedForward(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.out = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, eps=LAYER_NORM_EPS)
        self.attn = Attention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """gradpool's character-level GPT. ``forward(idx)`` takes token ids
    ``[B, T]`` (``T <= block_size``) and gives logits ``[B, T, vocab_size]``."""

    def __init__(
        self,
        n_layer: int,
        n_head: int,
        n_embd: int,
        block_size: int,
        vocab_size: int,
        vocab: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.vocab: List[str] = list(vocab or [])
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[-1]
        if t > self.block_size:
            raise ValueError(f"{t} tokens, but the model sees at most {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (every character must be in the vocabulary)."""
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"characters not in the model's vocabulary: {unknown}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[int(i)] for i in ids)


class MLP(nn.Module):
    """gradpool's MLP classifier: ``forward(x)`` takes standardised features
    ``[B, inputs]`` (see :meth:`standardize`) and gives logits ``[B, classes]``."""

    def __init__(
        self,
        inputs: int,
        hidden: Sequence[int],
        classes: int,
        csv: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        sizes = [inputs, *hidden]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], classes)
        csv = csv or {}
        self.features: List[str] = list(csv.get("features", []))
        self.classes: List[str] = list(csv.get("classes", []))
        self.register_buffer("mean", torch.tensor(csv.get("mean", [0.0] * inputs)))
        self.register_buffer("std", torch.tensor(csv.get("std", [1.0] * inputs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw feature values standardised as in training (the training
        split's mean and standard deviation)."""
        return (raw - self.mean) / self.std


def load(path: Union[str, "os.PathLike[str]"], device: str = "cpu") -> nn.Module:
    """The model in a ``gradpool-model-v1`` file, as a :class:`GPT` or
    :class:`MLP` in eval mode."""
    with safe_open(os.fspath(path), framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{path}: format {metadata.get('format')!r}, expected {MODEL_FORMAT!r} "
            "(a model file from job.fetch or gradpool job fetch)"
        )
    config = json.loads(metadata["model"])
    kind = config.pop("kind", None)
    module: nn.Module
    if kind == "gpt":
        vocab = json.loads(metadata.get("vocab", "[]"))
        module = GPT(vocab=vocab, **config)
    elif kind == "mlp":
        csv = json.loads(metadata.get("csv", "null")) or {}
        module = MLP(csv=csv, **config)
    else:
        raise ValueError(f"{path}: a {kind!r} model has no PyTorch counterpart here")
    state = {}
    for name, value in tensors.items():
        if name in ("tok_emb", "pos_emb"):
            state[f"{name}.weight"] = value
        elif name.endswith(".weight") and value.dim() == 2:
            state[name] = value.t().contiguous()
        else:
            state[name] = value
    for name, buffer in module.state_dict().items():
        if name in ("mean", "std"):
            state[name] = buffer
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()
