"""Training reads: fixed-length blocks, a seeded epoch-by-epoch shuffle, a disjoint share per rank.

The data position is one number, `samples_consumed`: global sample k is block `order(epoch)[k % N]` of
epoch k // N, and optimizer step s consumes samples [s*G, (s+1)*G) of the global batch G. Rank r takes the
contiguous slice [r*m*a, (r+1)*m*a) of every global batch (m: micro-batch, a: accumulation steps). So the
blocks a step trains on depend on the global batch only, not on how many processes share it, and a run
resumes anywhere by starting the sampler at `samples_consumed`. That one integer is the whole loader state,
which is why a stateful loader (torchdata's StatefulDataLoader) is not needed here.

    loader = train_loader(TokenShards("tokens/").dataset("train", 512), micro_batch_size=4, grad_accum=2,
                          rank=0, world_size=8, seed=0, start_sample=0)
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError


class ShardBlocks(Dataset):
    """Block i = tokens [i*seq_len, (i+1)*seq_len) of a token shard, read through np.memmap.

    The map is opened lazily in each process (and each DataLoader worker): only the pages of the blocks
    read are ever in memory, so memory does not grow with the size of the shard.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, num_tokens: int, seq_len: int) -> None:
        self.path, self.dtype, self.num_tokens, self.seq_len = Path(path), np.dtype(dtype), num_tokens, seq_len
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_tokens // self.seq_len

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        start = index * self.seq_len
        return torch.from_numpy(self._tokens[start:start + self.seq_len].astype(np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}  # workers open their own map


class TensorBlocks(Dataset):
    """The same interface over a (num_blocks, seq_len) tensor already in memory."""

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.dim() != 2 or len(blocks) == 0:
            raise DataError(f"training blocks must be a non-empty (num_blocks, seq_len) tensor, "
                            f"got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[index]


def block_order(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the blocks: a permutation seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_blocks)
    return order.astype(np.int32) if num_blocks < 1 << 31 else order  # 4 bytes per block, not 8


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches (lists of block indices), step after step from `start_sample`, endlessly."""

    def __init__(self, num_blocks: int, *, micro_batch_size: int, grad_accum: int, rank: int, world_size: int,
                 seed: int, start_sample: int = 0) -> None:
        if num_blocks < 1:
            raise DataError("no whole training block: use a smaller --seq-len, or more data")
        self.num_blocks, self.micro_batch_size, self.grad_accum = num_blocks, micro_batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch = micro_batch_size * grad_accum * world_size
        if start_sample % self.global_batch:
            raise DataError(f"sample {start_sample} is not the start of a global batch of {self.global_batch}")
        self.start_sample = start_sample
        self._orders: dict[int, np.ndarray] = {}

    def block(self, sample: int) -> int:
        """The block index of global sample number `sample`."""
        epoch, position = divmod(sample, self.num_blocks)
        if epoch not in self._orders:
            # Keep the current epoch and the next only: a global batch spans at most two epochs.
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = block_order(self.num_blocks, self.seed, epoch)
        return int(self._orders[epoch][position])

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.micro_batch_size * self.grad_accum
        step_start = self.start_sample
        while True:
            first = step_start + self.rank * per_rank
            for micro in range(self.grad_accum):
                start = first + micro * self.micro_batch_size
                yield [self.block(sample) for sample in range(start, start + self.micro_batch_size)]
            step_start += self.global_batch


def _ignore_interrupts(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group, and so does SIGTERM from a cluster or torchrun: the training
    # process finishes its step and checkpoints (see distill.loop), so its readers must live on until it
    # stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(dataset: Dataset, *, micro_batch_size: int, grad_accum: int, rank: int, world_size: int,
                 seed: int, start_sample: int = 0, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader of this rank's (micro_batch_size, seq_len) micro-batches, from `start_sample`."""
    sampler = GlobalBatchSampler(len(dataset), micro_batch_size=micro_batch_size, grad_accum=grad_accum, rank=rank,
                                 world_size=world_size, seed=seed, start_sample=start_sample)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=2 * grad_accum if workers else None,
                      worker_init_fn=_ignore_interrupts if workers else None)
