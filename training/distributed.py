"""Process groups and reproducible data order, for one process or many under ``torchrun``.

``torchrun --nproc_per_node=N -m training train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
``init_distributed`` then joins the group (NCCL on GPUs, gloo on the CPU). Without those
variables everything here degrades to a single process, so the same code path serves both.

The data order is owned by ``ResumableBatchSampler``, not by DataLoader's RNG: epoch ``e`` is
a permutation drawn from ``(seed, e)``, each rank takes every ``world_size``-th index of it
(as ``DistributedSampler`` does), and the sampler can start at any iteration. A resumed run
therefore sees exactly the batches the interrupted run would have seen next. Augmentation
randomness is a function of ``(seed, epoch, index)`` (``SeededSamples``).
"""
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = "cuda:%d" % local_rank
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=%s requested but CUDA is not available" % name)
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group when started by torchrun; a single-process context otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(ctx: DistContext, obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not ctx.distributed:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a copy; the input is left alone)."""
    if not ctx.distributed:
        return tensor.clone()
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def broadcast_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. Each rank updates
    them from its own batches; evaluating and saving after this makes all ranks agree."""
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class ResumableBatchSampler(Sampler):
    """Endless batches of ``(epoch, index)`` keys in a seeded order that can start anywhere.

    Epoch ``e``'s order is ``randperm(num_samples)`` drawn from a generator seeded with
    ``seed + e``; it is padded by wrapping to a multiple of ``world_size`` and this rank takes
    positions ``rank, rank + world_size, ...``. Each epoch yields ``batches_per_epoch`` full
    batches (the remainder is dropped, as with ``drop_last=True``). Iteration ``i`` is batch
    ``i % batches_per_epoch`` of epoch ``i // batches_per_epoch``: the position is a function
    of the iteration, so prefetching workers cannot make a saved position wrong.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_iteration: int = 0, shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.per_rank = -(-self.num_samples // self.world_size)  # ceil
        if self.per_rank < self.batch_size:
            raise ValueError("batch_size %d is larger than the %d training images per process; "
                             "lower batch_size" % (self.batch_size, self.per_rank))
        self.batches_per_epoch = self.per_rank // self.batch_size
        self.start_iteration = int(start_iteration)

    def position(self, iteration: int) -> Tuple[int, int]:
        """(epoch, batch within the epoch) of a 0-based iteration."""
        return divmod(int(iteration), self.batches_per_epoch)

    def epoch_indices(self, epoch: int) -> List[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]  # wrap so every rank gets per_rank indices
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, batch = self.position(self.start_iteration)
        while True:
            indices = self.epoch_indices(epoch)
            for b in range(batch, self.batches_per_epoch):
                chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(epoch, i) for i in chunk]
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # batches per epoch (the iterator itself never ends)
        return self.batches_per_epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on all three numbers (not merely their sum)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Item ``(epoch, index)`` of a ``SegmentationDataset``, augmented with a numpy Generator
    seeded from ``(seed, epoch, index)``: the same key gives the same sample in any process,
    with any number of workers, and in a resumed run."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        image, label = self.dataset.get(index, rng)
        return torch.from_numpy(image), torch.from_numpy(label)
