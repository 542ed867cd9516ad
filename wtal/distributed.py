"""Devices and data-parallel training across processes (``torchrun``): the device a run
computes on, process group, sharding, gathers.

The training step under DDP is the single-process step, split across ranks:

* every rank draws the same shuffled order and the same *global* batches of
  ``train.batch_size`` videos; each rank takes a contiguous slice of each global batch
  (:class:`ShardedLoader`), so the union of the ranks' batches is the single-process batch;
* the losses are per-video sums (never means over the batch), so the gradient of a global
  batch is the *sum* of the ranks' gradients: :func:`wrap_model` registers an all-reduce hook
  that sums instead of DDP's default mean, which is right for uneven and empty slices too;
* the inter-video memory is updated on every rank from the gathered rows of the whole global
  batch in global order (:func:`gather_rows`), so it stays identical on all ranks;
* inference (pseudo labels, evaluation) runs on a contiguous slice of the videos per rank
  (:func:`shard_dataset`) and is gathered.

Outside a process group every helper is the identity, so single-process code paths are
untouched. Process groups come from the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from wtal.data import Batch, collate
from wtal.io import InputError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 3600.0
"""Seconds a collective waits for the other ranks before failing. Evaluation runs on rank 0
while the others wait at the next collective, so this must exceed the longest evaluation."""

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Environment variables that ``torchrun`` sets for every worker."""


# ----------------------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    """True when every variable of :data:`TORCHRUN_VARIABLES` is set."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def world_size() -> int:
    """Processes in the default group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the rank that writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for CUDA under ``torchrun``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[int]:
    """Join the ``torchrun`` process group for the body of the ``with``, then leave it.

    Does nothing (and yields 1) when not launched by ``torchrun`` or with a world size of 1,
    so ``wtal train`` without ``torchrun`` keeps the single-process path.

    Args:
        device: the configured device; selects the backend (gloo for CPU, NCCL for CUDA)
            and, for CUDA, the rank's GPU ``cuda:LOCAL_RANK``.
        timeout_s: see :data:`DEFAULT_TIMEOUT_S`.

    Yields:
        The world size.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield 1
        return
    device = rank_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device),
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield dist.get_world_size()
        # DDP's reducer (and its pending gradient futures) may sit in a reference cycle; freed
        # at interpreter exit, after the group is gone, gloo's threads abort the process
        # ("terminate called without an active exception"). Free it while the group lives.
        gc.collect()
        # On success every rank waits for the others before tearing down its connections:
        # a gloo peer that goes first can abort a rank still finishing (the same message).
        # After an exception a barrier could hang instead.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rank_seed(seed: int, rank_: int) -> int:
    """A seed for rank ``rank_``'s own random stream (dropout) derived from the run's seed."""
    return int(np.random.SeedSequence([seed, rank_]).generate_state(1)[0])


# ----------------------------------------------------------------------------- sharding


def split_sizes(n: int, world: int) -> list[int]:
    """Sizes of ``world`` contiguous slices of ``n`` items; the first ``n % world`` get one more."""
    return [n // world + (r < n % world) for r in range(world)]


def shard_range(n: int, rank_: int, world: int) -> range:
    """The contiguous slice of ``range(n)`` that rank ``rank_`` of ``world`` owns."""
    sizes = split_sizes(n, world)
    start = sum(sizes[:rank_])
    return range(start, start + sizes[rank_])


def shard_dataset(dataset: Dataset) -> Dataset:
    """This rank's contiguous slice of ``dataset`` (the dataset itself in one process)."""
    world = world_size()
    if world == 1:
        return dataset
    return Subset(dataset, shard_range(len(dataset), rank(), world))


class Shard(NamedTuple):
    """One rank's part of a global batch."""

    batch: Batch
    """This rank's videos; when ``empty``, the global batch's first video as a stand-in."""
    global_size: int
    """Videos in the whole global batch (what the single-process loop would count)."""
    empty: bool
    """This rank has no video of this global batch (fewer videos than ranks): the stand-in
    runs a forward and a backward with exactly zero gradients, so that every rank takes part
    in the gradient all-reduce, and adds nothing to the memory or the loss sums."""
    counts: tuple[int, ...]
    """Videos of every rank in this global batch, in rank order."""


class ShardedLoader:
    """This rank's slices of the global batches of ``dataset``.

    The global batches are those of ``DataLoader(dataset, batch_size, shuffle=generator is
    not None, generator=generator)``: the index order is drawn by a DataLoader over
    ``range(len(dataset))`` with the same generator, so it matches the single-process order
    whatever the sampler draws internally. Each global batch is split into contiguous slices
    by :func:`split_sizes`; concatenating the slices in rank order gives the global batch.

    Args:
        dataset: the videos.
        batch_size: videos per global batch.
        generator: seeds the shuffle; ``None`` keeps the dataset order.
        rank_: this rank (default: from the process group).
        world: number of ranks (default: from the process group).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        rank_: int | None = None,
        world: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        self.indices = DataLoader(
            range(len(dataset)),  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            collate_fn=list,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Shard]:
        for indices in self.indices:
            counts = split_sizes(len(indices), self.world)
            start = sum(counts[: self.rank])
            mine = indices[start : start + counts[self.rank]]
            videos = [self.dataset[i] for i in (mine or indices[:1])]
            yield Shard(collate(videos), len(indices), not mine, tuple(counts))


def batch_loader(
    dataset: Dataset, batch_size: int, generator: torch.Generator | None = None
) -> DataLoader | ShardedLoader:
    """Collated batches of ``dataset``, shuffled by ``generator`` (None keeps the dataset's
    order): a plain DataLoader in one process, this rank's :class:`ShardedLoader` under DDP,
    where every rank draws the same order and takes its slice of each batch."""
    if world_size() > 1:
        return ShardedLoader(dataset, batch_size, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        collate_fn=collate,
    )


# ----------------------------------------------------------------------------- gradients


def _sum_gradients(state, bucket):  # no annotations: DDP checks them at run time
    """DDP communication hook: all-reduce a gradient bucket (a ``dist.GradBucket``) as a
    sum and return a ``Future[Tensor]``. DDP's default hook divides by the world size,
    which would be wrong for losses summed per video."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_model(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` in DDP with summed gradients.

    Parameters and buffers are synchronised from rank 0 once, here. After that the buffers
    (the inter-video memory) are kept identical by the training loop itself, so they are not
    broadcast at every forward.
    """
    init = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    # torch >= 2.13 renames the flag; the old name still works there but warns.
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in init
        else {"broadcast_buffers": False}
    )
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
    )
    ddp.register_comm_hook(None, _sum_gradients)
    return ddp


# ----------------------------------------------------------------------------- collectives


def _comm_device(like: Tensor | None = None) -> torch.device:
    if like is not None:
        return like.device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(item: Batch | Shard, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Rows of every rank's slice of ``item``'s global batch, in global order.

    Args:
        item: what the loader yielded; a plain :class:`Batch` returns ``tensors`` unchanged.
        tensors: (b, ...) tensors of this rank's slice (b rows, ignored when the slice is
            empty), same dtype.

    Returns:
        The tensors with (global_size, ...) rows, identical on every rank.
    """
    if not isinstance(item, Shard):
        return tensors
    counts = item.counts
    mine = counts[rank()]
    widths = [int(np.prod(t.shape[1:])) for t in tensors]
    flat = torch.cat([t[:mine].reshape(mine, w) for t, w in zip(tensors, widths, strict=True)], 1)
    padded = flat.new_zeros(max(counts), flat.shape[1])
    padded[:mine] = flat
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    rows = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])  # (N, F)
    return tuple(
        x.reshape(-1, *t.shape[1:]) for x, t in zip(rows.split(widths, 1), tensors, strict=True)
    )


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Sum of each value over all ranks (float64; the identity in one process)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist(), strict=True))


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable, CPU tensors only), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: T) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
