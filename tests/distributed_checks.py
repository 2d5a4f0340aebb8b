"""What each rank of tests/test_distributed.py's process group runs: TrainStep and the DDP backends
across two gloo ranks, the single-process runs they must match (on rank 0), and the refusals. Each
rank writes what it computed to out_dir; the tests compare the files.

    python tests/distributed_checks.py    (is not run directly: see run_group)
"""

import datetime
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from lenet_triton import LeNet, TrainStep, distributed, train
from lenet_triton.datasets import load_digits
from lenet_triton.testing import recorded_launches

# Global batch sizes, one a step: uneven splits across 2 ranks, and a batch of 1 that leaves rank 1
# with no samples.
GLOBAL_BATCHES = (5, 8, 3, 1, 6, 7, 2, 9, 4, 5)
DDP_GLOBAL_BATCHES = (5, 1, 4)
OPTIMIZERS = {
    "sgd-nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=2e-3, betas=(0.85, 0.99), weight_decay=1e-2),
}
_DIGITS = load_digits()[0]


def global_batch(step: int, size: int):
    """The same images and labels on every rank: step `step`'s global batch of `size` digits, float64."""
    picked = (torch.arange(size) + 17 * step) % len(_DIGITS)
    return _DIGITS.images[picked].double(), _DIGITS.labels[picked]


def _state(model, optimizer, losses) -> dict:
    return {"parameters": [p.detach().clone() for p in model.parameters()],
            "optimizer": [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()],
            "losses": torch.tensor(losses, dtype=torch.float64)}


def train_step_run(optimizer_name: str, ranks, collective="all_gather") -> dict:
    """TrainStep over GLOBAL_BATCHES, each rank on its slice (ranks None: one process, whole batches)."""
    torch.manual_seed(0)
    model = LeNet(backend="fused").double()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    step = TrainStep(model, optimizer, group=None if ranks is None else ranks.group, collective=collective)
    losses = []
    for i, size in enumerate(GLOBAL_BATCHES):
        images, labels = global_batch(i, size)
        if ranks is not None:
            mine = distributed.share(size, ranks.world_size, ranks.rank)
            images, labels = images[mine].contiguous(), labels[mine].contiguous()
        losses.append(step(images, labels, global_batch=size).item())
    return _state(model, optimizer, losses)


def ddp_run(backend: str, ranks, compiled: bool = False) -> dict:
    """train.train_step with torch's SGD over DDP_GLOBAL_BATCHES, under DistributedDataParallel across
    ranks (ranks None: one process, whole batches), optionally torch.compile'd around the DDP model."""
    torch.manual_seed(0)
    model = LeNet(backend=backend).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if ranks is None:
        step = partial(train.train_step, model, optimizer)
    else:
        replica = torch.nn.parallel.DistributedDataParallel(model)
        if compiled:
            torch._dynamo.reset()
            replica = torch.compile(replica)
        step = partial(train.train_step, replica, optimizer, ranks=ranks.world_size)
    losses = []
    for i, size in enumerate(DDP_GLOBAL_BATCHES):
        images, labels = global_batch(i, size)
        if ranks is None:
            losses.append(step(images, labels).item())
            continue
        mine = distributed.share(size, ranks.world_size, ranks.rank)
        loss_sum = step(images[mine], labels[mine], global_batch=size)
        losses.append(distributed.agree(loss_sum.reshape(1).double(), ranks).item() / size)
    return _state(model, optimizer, losses)


def launches_per_step(ranks, solo) -> dict:
    """Kernel launches of one TrainStep step: across the ranks at a global batch of 4 and of 1 (rank 1
    then has no samples); on rank 0 also in one process, and in `solo`, a process group of rank 0 alone."""
    counts = {}

    def count(name, group, size, rank, world):
        torch.manual_seed(0)
        model = LeNet(backend="fused")
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), group=group)
        images, labels = global_batch(0, size)
        mine = distributed.share(size, world, rank)
        with recorded_launches() as launches:
            step(images[mine].float().contiguous(), labels[mine].contiguous(), global_batch=size)
        counts[name] = len(launches)

    for size in (4, 1):
        count(f"ranks batch {size}", ranks.group, size, ranks.rank, ranks.world_size)
    if ranks.rank == 0:
        count("one process", None, 4, 0, 1)
        count("group of one", solo, 4, 0, 1)
    return counts


def refusals(ranks) -> dict:
    """The messages of the checks that must refuse, on this rank."""
    found = {}
    try:
        distributed.check_same_options({"lr": str(0.1 * (ranks.rank + 1)), "seed": "0"}, ranks)
    except ValueError as error:
        found["options"] = str(error)
    model = LeNet(backend="fused")
    try:
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), group=ranks.group, cuda_graph=True)
    except ValueError as error:
        found["cuda_graph"] = str(error)
    return found


def run_checks(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank's part: joins the group, runs every check, writes rank<r>.pt (or rank<r>.error)."""
    out = Path(out_dir)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=120))
        ranks = distributed.Ranks(rank, world_size, rank, dist.group.WORLD)
        solo = dist.new_group([0])   # every rank makes it, as torch requires; only rank 0 is in it
        results = {"refusals": refusals(ranks), "launches": launches_per_step(ranks, solo)}
        for name in OPTIMIZERS:
            results[f"train_step {name}"] = train_step_run(name, ranks)
        results["train_step adam again"] = train_step_run("adam", ranks)
        results["train_step sgd-nesterov all_reduce"] = train_step_run("sgd-nesterov", ranks, "all_reduce")
        for backend in ("triton", "fused"):
            results[f"ddp {backend}"] = ddp_run(backend, ranks)
        results["ddp triton compiled"] = ddp_run("triton", ranks, compiled=True)
        if rank == 0:   # what one process computes, for the tests to compare with
            results["train_step adam group of one"] = train_step_run("adam", distributed.Ranks(0, 1, 0, solo))
            for name in OPTIMIZERS:
                results[f"one process train_step {name}"] = train_step_run(name, None)
            for backend in ("triton", "fused"):
                results[f"one process ddp {backend}"] = ddp_run(backend, None)
        dist.destroy_process_group()
        torch.save(results, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def run_group(out_dir: Path, world_size: int = 2) -> list:
    """Every rank's results, run as one process group of forked processes (gloo, a file:// rendezvous
    in out_dir, so no port is fixed)."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if not torch.cuda.is_available() else "spawn")
    init_file = out_dir / "rendezvous"
    processes = [context.Process(target=run_checks, args=(rank, world_size, str(init_file), str(out_dir)))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=900)
        if process.is_alive():
            process.kill()
    errors = [path.read_text() for path in sorted(out_dir.glob("rank*.error"))]
    if errors:
        raise RuntimeError("a rank failed:\n" + "\n".join(errors))
    codes = [process.exitcode for process in processes]
    if codes != [0] * world_size:
        raise RuntimeError(f"the ranks ended with exit codes {codes}")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


if __name__ == "__main__":
    raise SystemExit("tests/distributed_checks.py is run by tests/test_distributed.py (run_group)")
