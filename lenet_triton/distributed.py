"""Data-parallel training on torch.distributed: the process group, the global batch's split across
ranks, and what only rank 0 does.

Under `torchrun` (which sets RANK, WORLD_SIZE and LOCAL_RANK), `python -m lenet_triton.train` runs
one process per rank. `--batch-size` stays the global batch: every global batch of the seeded order
is cut into one contiguous slice per rank, as even as can be, so each sample is used exactly once
(no padding with repeated samples) and a rank may get none. Each rank's loss is scaled by its share
of the global batch, so the summed gradients are the global batch's mean gradient, whatever the
split.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

# torchrun's environment.
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BACKENDS = ("gloo", "nccl")
# A collective that waits longer than this for a rank ends with an error instead of hanging.
DEFAULT_TIMEOUT = datetime.timedelta(seconds=120)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run."""
    rank: int
    world_size: int
    local_rank: int
    group: Optional[object] = None     # the process group (None: one process)

    @property
    def leader(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0


SINGLE = Ranks(0, 1, 0)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENVIRONMENT)


def choose_backend(requested: Optional[str], device: torch.device) -> str:
    """gloo on a CPU, NCCL on CUDA, unless `requested` says otherwise (and can work)."""
    backend = requested or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("--dist-backend nccl needs CUDA devices, and this machine has none; use gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"--dist-backend nccl needs the model on a CUDA device, not {device}")
    return backend


def start(requested_backend: Optional[str], device: torch.device,
          timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Ranks:
    """Joins the process group that torchrun set up the environment for (env:// rendezvous)."""
    backend = choose_backend(requested_backend, device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.group.WORLD)


def stop(ranks: Ranks) -> None:
    if ranks.group is not None and dist.is_initialized():
        dist.destroy_process_group()


def share(global_batch: int, world_size: int, rank: int) -> slice:
    """This rank's contiguous slice of a global batch: the first `global_batch % world_size` ranks
    take one sample more than the others."""
    base, extra = divmod(global_batch, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def check_batch_size(global_batch: int, world_size: int) -> None:
    if global_batch < world_size:
        raise ValueError(f"--batch-size {global_batch} is smaller than the {world_size} processes: each global "
                         "batch is split across the ranks, so give at least one sample per rank")


def broadcast_parameters(module: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's parameters and buffers, on every rank."""
    if ranks.group is None:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0, group=ranks.group)


def check_same_options(options: dict, ranks: Ranks) -> None:
    """Refuses a run whose ranks were started with different options (one collective)."""
    if ranks.group is None:
        return
    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, options, group=ranks.group)
    for rank, other in enumerate(gathered):
        differ = sorted(name for name in set(options) | set(other) if options.get(name) != other.get(name))
        if differ:
            raise ValueError(f"rank {rank} was started with other options than rank {ranks.rank}: "
                             + ", ".join(f"--{name.replace('_', '-')} {other.get(name)!r} there, "
                                         f"{options.get(name)!r} here" for name in differ))


def agree(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum over ranks of a small float64 vector (one collective), e.g. loss sums and stop flags."""
    if ranks.group is not None:
        dist.all_reduce(values, group=ranks.group)
    return values


def barrier(ranks: Ranks) -> None:
    if ranks.group is not None:
        dist.barrier(group=ranks.group)
