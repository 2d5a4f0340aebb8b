"""python -m bench distributed: LeNet's training step across the ranks of one machine, beside one
process at the same global batch, and the collective's share of the step.

    python -m bench distributed [--ranks 2] [--batch 64] [--rounds 10] [--warmup 2] [--variants ...]
    make bench-distributed

The ranks are processes of this machine joined by torch.distributed: gloo on a CPU (the cores split
evenly between them), NCCL with one GPU per rank. Each takes its slice of every global batch
(lenet_triton.distributed.share). Every variant of variants.DISTRIBUTED_VARIANTS runs first in one
process on the whole batch, then across the ranks, from the same weights and for the same steps;
the two must end at the same parameters (within the float32 tolerance) or the run fails.

A round is one step, from a barrier to its end on the slowest rank, with the device synchronized.
The collective's time is the time inside it on each rank (the device synchronized on either side
on a GPU), averaged over the ranks: it includes waiting for a slower rank. DDP's all-reduce is timed
through a communication hook that runs it synchronously; inside a CUDA graph it cannot be timed
apart. Medians over the rounds.

Writes <results>/<device>-distributed.json and .md (results: bench/results unless --results).
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import triton

from lenet_triton import LeNet, TrainStep, distributed, train
from lenet_triton.files import write_text
from lenet_triton.testing import tolerance, worst_mismatch

from . import variants

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# A rank that stops answering ends the run with an error after this long instead of hanging it.
TIMEOUT_SECONDS = 300
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class CollectiveClock:
    """Seconds spent inside collectives in the current round."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def timed(self, collective):
        def timed_collective(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            try:
                return collective(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds += time.perf_counter() - start
        return timed_collective


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_all_reduce_hook(clock: CollectiveClock, bucket):
    """DDP's default all-reduce (sum, then divide by the world size), run synchronously so it can be timed."""
    tensor = bucket.buffer()
    clock.timed(dist.all_reduce)(tensor)
    tensor.div_(dist.get_world_size())
    future = torch.futures.Future()
    future.set_result(tensor)
    return future


def _make_step(variant: str, model, optimizer, group, world: int, global_batch: int, clock: CollectiveClock):
    """step(images, labels) for one variant; group None: one process on the whole batch."""
    if variant.startswith("fused-step"):
        step = TrainStep(model, optimizer, cuda_graph=variant == "fused-step-graph", group=group,
                         collective="all_reduce" if variant.endswith("all-reduce") else "all_gather")
        return lambda images, labels: step(images, labels, global_batch=global_batch if group else None)
    if group is None:
        return lambda images, labels: train.train_step(model, optimizer, images, labels)
    device = next(model.parameters()).device
    replica = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, process_group=group)
    replica.register_comm_hook(clock, _timed_all_reduce_hook)
    return lambda images, labels: train.train_step(replica, optimizer, images, labels, global_batch=global_batch,
                                                   ranks=world)


def time_variant(variant: str, batch: int, rounds: int, warmup: int, device: torch.device, group=None) -> dict:
    """Steps of one variant: {"step": seconds per round, "collective": seconds per round (None when
    not timed apart), "parameters": the parameters after every step}."""
    world, rank = (dist.get_world_size(group), dist.get_rank(group)) if group is not None else (1, 0)
    torch.manual_seed(0)
    images = torch.randn(batch, 1, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    mine = distributed.share(batch, world, rank)
    images, labels = images[mine].contiguous(), labels[mine].contiguous()
    model = LeNet(backend=variants.backend_of(variant)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    clock = CollectiveClock(device)
    timed_apart = group is not None and variant != "fused-step-graph"
    patches = ([mock.patch.object(dist, name, clock.timed(getattr(dist, name))) for name in ("all_gather", "all_reduce")]
               if timed_apart and variant.startswith("fused-step") else [])
    for patch in patches:
        patch.start()
    try:
        step = _make_step(variant, model, optimizer, group, world, batch, clock)
        for _ in range(warmup):
            step(images, labels)
        steps, collectives = [], []
        for _ in range(rounds):
            if group is not None:
                dist.barrier(group)
            _sync(device)
            clock.seconds = 0.0
            start = time.perf_counter()
            step(images, labels)
            _sync(device)
            steps.append(time.perf_counter() - start)
            collectives.append(clock.seconds)
    finally:
        for patch in patches:
            patch.stop()
    return {"step": steps, "collective": collectives if timed_apart else None,
            "parameters": [p.detach().cpu() for p in model.parameters()]}


def _rank(rank: int, world: int, init_file: str, chosen: list, batch: int, rounds: int, warmup: int,
          device_type: str, out_file: str) -> None:
    """One rank's runs; rank 0 writes every rank's to out_file."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS))
    try:
        runs = {}
        for variant in chosen:
            runs[variant] = time_variant(variant, batch, rounds, warmup, device, group=dist.group.WORLD)
            if rank == 0:
                print(f"  {variant}: {world} ranks done", flush=True)
        gathered = [None] * world
        dist.all_gather_object(gathered, {v: {k: r[k] for k in ("step", "collective")} for v, r in runs.items()})
        if rank == 0:
            torch.save({"ranks": gathered, "parameters": {v: r["parameters"] for v, r in runs.items()}}, out_file)
    finally:
        dist.destroy_process_group()


def summarize(variant: str, single: dict, ranks: list, parameters: list) -> dict:
    """One report row: medians over the rounds, and whether the ranks ended where one process did."""
    rounds = len(single["step"])
    step = [max(rank["step"][i] for rank in ranks) for i in range(rounds)]
    collective = (None if ranks[0]["collective"] is None else
                  statistics.median(statistics.mean(rank["collective"][i] for rank in ranks) for i in range(rounds)))
    rtol, atol = tolerance(torch.float32)
    mismatches = [f"parameter {i}: {worst_mismatch(a, b)}" for i, (a, b) in enumerate(zip(parameters, single["parameters"]))
                  if not torch.allclose(a, b, rtol=rtol, atol=atol)]
    one, across = statistics.median(single["step"]), statistics.median(step)
    return {"variant": variant, "one_process_seconds": one, "ranks_seconds": across,
            "collective_seconds": collective, "collective_share": None if collective is None else collective / across,
            "agrees": not mismatches, "mismatch": "; ".join(mismatches)}


def _seconds(value) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def markdown(result: dict) -> str:
    world = result["ranks"]
    lines = [f"# Training step across {world} ranks ({result['backend']})", "",
             f"{result['device']}; global batch {result['batch']}, float32, SGD with momentum; medians of "
             f"{result['rounds']} rounds after {result['warmup']} warm-up step{'' if result['warmup'] == 1 else 's'}; "
             f"{result['date']}; "
             f"{result['versions']}.", "",
             "`python -m bench distributed` (bench/distributed.py): one process on the whole batch beside "
             f"{world} ranks each on its slice. The collective's time is the time inside it, averaged over the "
             "ranks, including waiting for a slower rank.", "",
             f"| variant | 1 process | {world} ranks | ranks / 1 process | collective | collective share | "
             "same parameters |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        share = "-" if row["collective_share"] is None else f"{100 * row['collective_share']:.0f}%"
        lines.append(f"| {row['variant']} | {_seconds(row['one_process_seconds'])} | {_seconds(row['ranks_seconds'])} | "
                     f"{row['ranks_seconds'] / row['one_process_seconds']:.2f}x | {_seconds(row['collective_seconds'])} | "
                     f"{share} | {'yes' if row['agrees'] else 'NO: ' + row['mismatch']} |")
    return "\n".join(lines) + "\n"


def run(world: int, batch: int, rounds: int, warmup: int, chosen: list, results: Path, device_type: str) -> int:
    variants.pin_precision()
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    print(f"bench distributed: {', '.join(chosen)} at global batch {batch}, one process, then {world} ranks "
          f"({backend}); {warmup} warm-up steps and {rounds} rounds each", flush=True)
    singles = {}
    for variant in chosen:
        singles[variant] = time_variant(variant, batch, rounds, warmup, device)
        print(f"  {variant}: one process done", flush=True)
    # The ranks share the cores: one rank's numpy (the interpreter's arithmetic) and torch each get
    # their share of threads, set before the ranks import them.
    threads = str(max(1, (os.cpu_count() or 1) // world))
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: threads for name in THREAD_VARIABLES})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out_file = Path(tmp) / "ranks.pt"
            mp.spawn(_rank, args=(world, str(Path(tmp) / "rendezvous"), chosen, batch, rounds, warmup, device.type,
                                  str(out_file)), nprocs=world, join=True)
            gathered = torch.load(out_file)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    rows = [summarize(v, singles[v], [rank[v] for rank in gathered["ranks"]], gathered["parameters"][v])
            for v in chosen]
    result = {"ranks": world, "backend": backend, "batch": batch, "rounds": rounds, "warmup": warmup,
              "device": variants.device_name(), "date": time.strftime("%Y-%m-%d"),
              "versions": f"torch {torch.__version__}, triton {triton.__version__}", "rows": rows}
    slug = variants.device_slug()
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / f"{slug}-distributed.json", results / f"{slug}-distributed.md"
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    write_text(md_path, text)
    print("\n" + text + f"\nwrote {json_path} and {md_path.name}")
    disagreeing = [row["variant"] for row in rows if not row["agrees"]]
    if disagreeing:
        print(f"bench distributed: {', '.join(disagreeing)} ended at other parameters across ranks than in one "
              "process (see the table)", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2, help="processes (default 2; on CUDA at most one per GPU)")
    parser.add_argument("--batch", type=int, default=64, help="the global batch (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; they compile)")
    parser.add_argument("--variants", nargs="+", default=variants.DISTRIBUTED_VARIANTS,
                        choices=variants.DISTRIBUTED_VARIANTS, metavar="VARIANT",
                        help=f"default: all of {', '.join(variants.DISTRIBUTED_VARIANTS)}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when there is a GPU (NCCL), else the CPU (gloo)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON and MD")
    args = parser.parse_args(argv)
    device_type = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.ranks < 1:
        parser.error(f"--ranks must be >= 1, got {args.ranks}")
    if args.batch < args.ranks:
        parser.error(f"--batch {args.batch} is smaller than --ranks {args.ranks}: give every rank a sample")
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if device_type == "cuda" and args.ranks > torch.cuda.device_count():
        parser.error(f"--ranks {args.ranks} needs {args.ranks} GPUs; this machine has {torch.cuda.device_count()}")
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device")
    return run(args.ranks, args.batch, args.rounds, args.warmup, list(args.variants), args.results, device_type)


if __name__ == "__main__":
    sys.exit(main())
