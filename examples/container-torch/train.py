"""A character-level transformer trained as a gradpool container job.

One run trains one segment: steps [from, to) of the job, from the start
checkpoint to the end checkpoint (see gradpool.segment). Everything random
comes from the job's seed: the initial weights from `seg.determinism()`,
each step's batch from `seg.generator(step)` (in a parallel job, also
from the worker slot, on the worker's shard of the text).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradpool import segment

BLOCK = 64
WIDTH = 64
HEADS = 4
LAYERS = 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        mask = torch.triu(torch.ones(BLOCK, BLOCK, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, WIDTH)
        self.pos = nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(pos))))


def batch(data: torch.Tensor, gen: torch.Generator, size: int):
    starts = torch.randint(0, len(data) - BLOCK - 1, (size,), generator=gen)
    x = torch.stack([data[s : s + BLOCK] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + BLOCK + 1] for s in starts.tolist()])
    return x, y


def main() -> None:
    seg = segment.from_env()
    seg.determinism()
    text = open(seg.data, encoding="utf-8").read()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    split = int(len(ids) * (1 - seg.eval_fraction))
    train, held_out = ids[:split], ids[split:]
    # A parallel job's worker trains on its own slice (all of it otherwise).
    mine = seg.shard(len(train))
    train = train[mine.start : mine.stop]

    model = CharTransformer(len(chars))
    opt = torch.optim.AdamW(model.parameters(), lr=seg.lr, weight_decay=seg.weight_decay)
    seg.load(model, opt)

    for step in seg.steps():
        for group in opt.param_groups:
            group["lr"] = seg.lr_at(step)
        x, y = batch(train, seg.generator(step), seg.batch_size)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seg.log(step, loss.item())

    if len(held_out) > BLOCK + 1:
        with torch.no_grad():
            x, y = batch(held_out, torch.Generator().manual_seed(seg.seed), seg.batch_size)
            seg.log_eval(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    seg.save(model, opt)


if __name__ == "__main__":
    main()
