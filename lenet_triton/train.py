"""Train LeNet on real data: python -m lenet_triton.train [options] (or `make train`).

Writes into --out-dir, each file atomically: checkpoint.pt (a plain state_dict the tutorial's Net
loads), metrics.json (per-epoch losses, accuracy and seconds, plus backend, device and versions)
and curves.png; and, after each epoch (and every --checkpoint-every N mini-batches), resume.pt,
from which --resume continues a run that was stopped, even by SIGKILL, to exactly the weights of
a run that never stopped. The defaults reach >= 95% test accuracy on the embedded digits data;
metrics.json and the last line printed say after which epoch, and how many seconds from the
start, that was.

Under torchrun (torchrun --nproc-per-node N -m lenet_triton.train ...) every process is a rank of a
data-parallel run (lenet_triton.distributed): --batch-size stays the global batch, each rank trains
on its slice of it, and rank 0 alone prints and writes the files.
"""

import argparse
import os
import platform
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, datasets, distributed
from .files import atomic_path, write_json
from .kernels.config import interpreting
from .model import BACKENDS, LeNet
from .step import TrainStep

OPTIMIZERS = ("adam", "sgd")
TRITON_BACKENDS = ("triton", "fused")
EVAL_BATCH_SIZE = 1024
# The accuracy that "time to train" is measured to: what the defaults reach on digits.
TARGET_ACCURACY = 0.95
RESUME_FILE = "resume.pt"
# What must be the same for --resume to continue a run exactly.
RESUME_OPTIONS = ("dataset", "backend", "fused_step", "optimizer", "lr", "momentum", "batch_size", "seed", "dtype")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# --recipe NAME: another set of defaults (options given on the command line still win).
# tutorial-cifar10 is PyTorch's "Training a classifier" tutorial: SGD, lr 0.001, momentum 0.9,
# batch 4, 2 epochs, the running loss every 2000 mini-batches.
RECIPES = {"tutorial-cifar10": dict(dataset="cifar10", optimizer="sgd", lr=0.001, momentum=0.9, batch_size=4,
                                    epochs=2, log_every=2000)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lenet_triton.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=BACKENDS, default="triton", help="kernels behind the model")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="adam, or sgd with --momentum")
    parser.add_argument("--fused-step", action=argparse.BooleanOptionalAction, default=False,
                        help="train with lenet_triton.TrainStep: forward, loss, backward and the optimizer's "
                             "update in two Triton launches per step (any backend; best with --backend fused); "
                             "--no-fused-step: the model's backward and torch's optimizer")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum for --optimizer sgd")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the batch order")
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--dataset", choices=datasets.DATASETS, default="digits",
                        help="digits: embedded scikit-learn digits; mnist: IDX files in --data-dir; cifar10: "
                             "the python or binary version in --data-dir, unpacked or as its .tar.gz")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory of the MNIST IDX files (.gz or raw) or of CIFAR-10 (3 input channels)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--log-every", type=int, default=0, metavar="N",
                        help="print the running loss every N mini-batches, as the tutorial does (0: off)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help=f"also write {RESUME_FILE} every N mini-batches (it is written after each epoch)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the run in --out-dir from its {RESUME_FILE}, with the same options")
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="tutorial-cifar10: the defaults of PyTorch's CIFAR-10 tutorial (needs --data-dir)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the model's parameters and arithmetic (float64: runs that must agree to the last bits)")
    parser.add_argument("--dist-backend", choices=distributed.BACKENDS, default=None,
                        help="under torchrun: the process group's backend (default: gloo on a CPU, nccl on CUDA)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The options, with --recipe's defaults under the ones given on the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe is not None:
        parser.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    return args


def resolve_device(requested: str, backend: str, local_rank: int = 0) -> torch.device:
    """The torch device for --device, or a ValueError that says why it can't be used. Under torchrun
    a CUDA device without an index is the rank's own, cuda:LOCAL_RANK."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and distributed.launched_by_torchrun():
        requested = f"cuda:{local_rank}"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device: {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device: cuda was asked for, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device: {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type == "cpu":
        if backend in TRITON_BACKENDS and not interpreting():
            raise ValueError(f"--device cpu with --backend {backend} needs Triton's interpreter: set "
                             "TRITON_INTERPRET=1")
    else:
        raise ValueError(f"--device: {device.type} is not supported; use cpu or cuda")
    return device


def check_args(args) -> None:
    """Refuses bad options before any work, naming the option."""
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.log_every < 0:
        raise ValueError(f"--log-every must be >= 0, got {args.log_every}")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.resume and not (args.out_dir / RESUME_FILE).is_file():
        raise ValueError(f"--resume: there is no {RESUME_FILE} in --out-dir {str(args.out_dir)!r} to continue from")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.dataset != "digits" and args.data_dir is None:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir, the directory of its files")
    if args.dataset == "digits" and args.data_dir is not None:
        raise ValueError("--data-dir is only read with --dataset mnist or cifar10")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise ValueError(f"--out-dir {str(args.out_dir)!r} exists and is not a directory")


def make_optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def batches(split: datasets.Split, batch_size: int, generator: torch.Generator = None, order=None, skip: int = 0):
    """(images, labels) batches in `order` (else shuffled by `generator` when one is given), from
    batch number `skip` on."""
    if order is None:
        order = torch.randperm(len(split), generator=generator) if generator is not None else torch.arange(len(split))
    for start in range(skip * batch_size, len(split), batch_size):
        index = order[start:start + batch_size]
        yield split.images[index], split.labels[index]


class _Position:
    """Where a run is: what resume.pt holds besides the model and the optimizer."""

    def __init__(self, epoch=1, done=0, order=None, shuffle=None, sums=(0.0, 0, 0.0), epochs=(), elapsed=0.0):
        self.epoch, self.done, self.order, self.shuffle = epoch, done, order, shuffle
        self.sums, self.epochs, self.elapsed = sums, list(epochs), elapsed


class _StopAfterTheStep:
    """Ctrl-C stops training after the mini-batch in flight, never inside one (an optimizer half
    way through its parameters); a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = self.forced = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def check(self):
        if self.requested:
            raise KeyboardInterrupt

    def release(self):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def save_resume(path: Path, args, model, optimizer, position: _Position) -> None:
    state = {"options": {name: getattr(args, name) for name in RESUME_OPTIONS}, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), **vars(position)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_resume(path: Path, args, model, optimizer, device) -> _Position:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"--resume: {path} can't be read ({type(error).__name__}: {error})") from None
    differ = [f"--{name.replace('_', '-')} {state['options'][name]} (now {getattr(args, name)})"
              for name in RESUME_OPTIONS if state["options"][name] != getattr(args, name)]
    if differ:
        raise ValueError(f"--resume: {path} was written with other options: " + ", ".join(differ))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"].cpu())
    return _Position(**{key: state[key] for key in vars(_Position())})


def train_step(model, optimizer, images, labels, global_batch: int = None, ranks: int = 1) -> torch.Tensor:
    """One step: forward, cross-entropy loss, backward, optimizer step. Returns the loss (detached).

    Under DistributedDataParallel (`ranks` of them, which average their gradients) images are this
    rank's slice of a global batch of `global_batch` samples: the loss is then the sum over the slice
    scaled by ranks / global_batch, so that the averaged gradient is the global batch's mean
    gradient whatever the split, and the returned value is that sum, unscaled."""
    optimizer.zero_grad(set_to_none=True)
    if global_batch is None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()
    loss_sum = F.cross_entropy(model(images), labels, reduction="sum")
    (loss_sum * (ranks / global_batch)).backward()
    optimizer.step()
    return loss_sum.detach()


@torch.no_grad()
def evaluate(model, split: datasets.Split, device) -> tuple[float, float, dict]:
    """(mean cross-entropy, accuracy, {class name: accuracy}) over a split; a class with no test
    image has accuracy None."""
    total_loss = 0.0
    hits = torch.zeros(len(split.classes), dtype=torch.int64)
    counts = torch.bincount(split.labels, minlength=len(split.classes))
    dtype = next(model.parameters()).dtype
    for images, labels in batches(split, EVAL_BATCH_SIZE):
        logits = model(images.to(device, dtype))
        total_loss += F.cross_entropy(logits, labels.to(device), reduction="sum").item()
        right = logits.argmax(1).cpu() == labels
        hits += torch.bincount(labels[right], minlength=len(split.classes))
    per_class = {name: (hits[i].item() / counts[i].item() if counts[i] else None)
                 for i, name in enumerate(split.classes)}
    return total_loss / len(split), hits.sum().item() / len(split), per_class


def time_to_target(epochs: list, target: float = TARGET_ACCURACY):
    """(epoch, seconds since the start) when test accuracy first reached `target`, else None."""
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch["seconds"]
        if epoch["test_accuracy"] >= target:
            return epoch["epoch"], elapsed
    return None


def target_summary(metrics: dict) -> str:
    """When (or whether) a run's metrics reached its target accuracy, in words."""
    target, epochs = f"{100 * metrics['target_accuracy']:g}% test accuracy", len(metrics["epochs"])
    if metrics["seconds_to_target"] is None:
        return f"did not reach {target} in {epochs} epoch{'s' if epochs > 1 else ''}"
    return f"reached {target} after epoch {metrics['epochs_to_target']}, {metrics['seconds_to_target']:.1f} s from the start"


def versions() -> dict:
    import numpy
    import triton
    return {"lenet_triton": __version__, "torch": torch.__version__, "triton": triton.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def plot_curves(path: Path, epochs: list, class_accuracy: dict) -> None:
    """Loss and test accuracy per epoch, and the last epoch's accuracy per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, (left, right, classes) = plt.subplots(1, 3, figsize=(15, 4))
    left.plot(x, [e["train_loss"] for e in epochs], marker="o", label="train")
    left.plot(x, [e["test_loss"] for e in epochs], marker="o", label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    left.legend()
    right.plot(x, [100 * e["test_accuracy"] for e in epochs], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="%", title="test accuracy")
    classes.bar(list(class_accuracy), [100 * (a or 0) for a in class_accuracy.values()], color="tab:blue")
    classes.set(ylabel="%", ylim=(0, 100), title="test accuracy per class")
    classes.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def dist_backend(ranks: distributed.Ranks):
    return None if ranks.group is None else distributed.dist.get_backend(ranks.group)


def train(args) -> dict:
    """Runs a whole training job as described by parsed arguments; returns the metrics it wrote (under
    torchrun, rank 0 writes them; the other ranks return theirs unwritten)."""
    check_args(args)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(args.device, "fused" if args.fused_step else args.backend, local_rank)
    ranks = distributed.SINGLE
    if distributed.launched_by_torchrun():
        distributed.check_batch_size(args.batch_size, int(os.environ["WORLD_SIZE"]))
        ranks = distributed.start(args.dist_backend, device)
    elif args.dist_backend is not None:
        raise ValueError("--dist-backend is only read under torchrun (torchrun --nproc-per-node N -m "
                         "lenet_triton.train ...)")
    try:
        return _train(args, ranks, device)
    finally:
        distributed.stop(ranks)


def _train(args, ranks: distributed.Ranks, device: torch.device) -> dict:
    leader = ranks.leader
    say = print if leader else (lambda *args, **kwargs: None)
    distributed.check_same_options({k: str(v) for k, v in vars(args).items()}, ranks)
    dtype = DTYPES[args.dtype]
    train_split, test_split = datasets.load(args.dataset, args.data_dir)
    torch.manual_seed(args.seed)
    model = LeNet(in_channels=train_split.images.shape[1], backend=args.backend).to(device, dtype)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum)
    resume_path = args.out_dir / RESUME_FILE
    position = load_resume(resume_path, args, model, optimizer, device) if args.resume else _Position()
    if position.epoch > args.epochs:
        raise ValueError(f"--resume: the run in {str(args.out_dir)!r} already finished its {position.epoch - 1} "
                         f"epochs; give --epochs more than that to train on")
    distributed.broadcast_parameters(model, ranks)
    if args.fused_step:
        step = TrainStep(model, optimizer, group=ranks.group)
    elif ranks.group is not None:
        replica = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        step = partial(train_step, replica, optimizer, ranks=ranks.world_size)
    else:
        step = partial(train_step, model, optimizer)
    shuffle = torch.Generator().manual_seed(args.seed)
    if position.shuffle is not None:
        shuffle.set_state(position.shuffle)
    if leader:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    uses_triton = args.backend in TRITON_BACKENDS or args.fused_step
    mode = " (Triton interpreter)" if uses_triton and device.type == "cpu" else ""
    how = ", fused training step" if args.fused_step else ""
    across = f", {ranks.world_size} processes ({dist_backend(ranks)})" if ranks.group is not None else ""
    say(f"training LeNet, backend {args.backend}{how}{mode}, on {device_name(device)}{across}: {args.dataset} "
        f"({len(train_split)} train / {len(test_split)} test images), {args.epochs} epochs", flush=True)
    if args.resume:
        say(f"resuming from {resume_path}: epoch {position.epoch}, after mini-batch {position.done}", flush=True)
    metrics = {"backend": args.backend, "fused_step": args.fused_step, "device": str(device), "device_name": device_name(device),
               "interpreter": mode != "", "dataset": args.dataset, "world_size": ranks.world_size,
               "dist_backend": dist_backend(ranks), "versions": versions(),
               "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "epochs": position.epochs}
    started = time.perf_counter() - position.elapsed
    steps = (len(train_split) + args.batch_size - 1) // args.batch_size
    stop = _StopAfterTheStep()

    def one_step(images, labels):
        """(this global batch's mean loss, whether any rank asked to stop), the same on every rank."""
        global_batch = len(labels)
        mine = distributed.share(global_batch, ranks.world_size, ranks.rank)
        images, labels = images[mine].to(device, dtype), labels[mine].to(device)
        if ranks.group is None:
            return step(images, labels).item(), stop.requested
        loss = step(images, labels, global_batch=global_batch)
        # TrainStep's loss is already the global mean; DDP's is this rank's sum: add the ranks' sums.
        local = 0.0 if args.fused_step else loss.item()
        agreed = distributed.agree(torch.tensor([local, float(stop.requested)], dtype=torch.float64, device=device),
                                   ranks).tolist()
        return (loss.item() if args.fused_step else agreed[0] / global_batch), agreed[1] > 0

    def stopping():
        """Whether any rank asked to stop (so that all stop at the same place)."""
        if ranks.group is None:
            return stop.requested
        flag = torch.tensor([float(stop.requested)], dtype=torch.float64, device=device)
        return distributed.agree(flag, ranks).item() > 0

    def save(position):
        """resume.pt, by rank 0, once every rank has finished the same mini-batch."""
        distributed.barrier(ranks)
        if leader:
            save_resume(resume_path, args, model, optimizer, position)

    try:
        for epoch in range(position.epoch, args.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            if position.order is None:   # a new epoch: its order, and the generator's state after drawing it
                position.order = torch.randperm(len(train_split), generator=shuffle)
                position.shuffle = shuffle.get_state()
            position.epoch = epoch
            loss_sum, seen, running_loss = position.sums
            with tqdm(batches(train_split, args.batch_size, order=position.order, skip=position.done),
                      initial=position.done, total=steps, desc=f"epoch {epoch}/{args.epochs}", unit="step",
                      mininterval=1.0, file=sys.stderr, disable=not leader) as progress:
                for number, (images, labels) in enumerate(progress, start=position.done + 1):
                    loss, stop_now = one_step(images, labels)
                    loss_sum, seen = loss_sum + loss * len(labels), seen + len(labels)
                    progress.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
                    running_loss += loss
                    if args.log_every and number % args.log_every == 0:
                        if leader:
                            progress.write(f"[{epoch}, {number:5d}] loss: {running_loss / args.log_every:.3f}",
                                           file=sys.stdout)
                            sys.stdout.flush()   # one line at a time, also into a pipe
                        running_loss = 0.0
                    position.done, position.sums = number, (loss_sum, seen, running_loss)
                    position.elapsed = time.perf_counter() - started
                    if args.checkpoint_every and number % args.checkpoint_every == 0 and number < steps:
                        save(position)
                    if stop_now:
                        raise KeyboardInterrupt
            model.eval()
            if leader:
                test_loss, test_accuracy, class_accuracy = evaluate(model, test_split, device)
                metrics["epochs"].append({"epoch": epoch, "train_loss": loss_sum / seen, "test_loss": test_loss,
                                          "test_accuracy": test_accuracy,
                                          "seconds": time.perf_counter() - epoch_start})
                say(f"epoch {epoch}: train loss {loss_sum / seen:.4f}, test loss {test_loss:.4f}, "
                    f"test accuracy {100 * test_accuracy:.2f}%, {metrics['epochs'][-1]['seconds']:.1f} s", flush=True)
            position = _Position(epoch + 1, 0, None, shuffle.get_state(), epochs=metrics["epochs"],
                                 elapsed=time.perf_counter() - started)
            save(position)
            if stopping():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if stop.forced:   # perhaps inside a step: the last resume.pt written stands
            say(f"\nstopped at once; {resume_path} holds the run as of its last checkpoint", flush=True)
            raise
        # Stopped between steps: position is the last whole mini-batch, the state the model is in.
        save(position)
        say(f"\ninterrupted in epoch {position.epoch} after mini-batch {position.done}; {resume_path} holds the "
            "run", flush=True)
        raise
    finally:
        stop.release()
    metrics["total_seconds"] = time.perf_counter() - started
    distributed.barrier(ranks)
    if not leader:
        return metrics
    metrics["final_test_accuracy"] = metrics["epochs"][-1]["test_accuracy"]
    metrics["final_class_accuracy"] = class_accuracy
    metrics["target_accuracy"] = TARGET_ACCURACY
    metrics["epochs_to_target"], metrics["seconds_to_target"] = time_to_target(metrics["epochs"]) or (None, None)
    with atomic_path(args.out_dir / "checkpoint.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    write_json(args.out_dir / "metrics.json", metrics)
    plot_curves(args.out_dir / "curves.png", metrics["epochs"], class_accuracy)
    # The tutorial's closing lines.
    correct = round(test_accuracy * len(test_split))
    print(f"Accuracy of the network on the {len(test_split)} test images: {100 * correct // len(test_split)} %")
    for name, accuracy in class_accuracy.items():
        print(f"Accuracy for class: {name:5s} is " + ("-" if accuracy is None else f"{100 * accuracy:.1f} %"))
    print(f"wrote {args.out_dir / 'checkpoint.pt'}, metrics.json and curves.png "
          f"({metrics['total_seconds']:.1f} s in all)", flush=True)
    print(target_summary(metrics), flush=True)
    return metrics


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        train(args)
    except (ValueError, datasets.DataError) as error:
        build_parser().error(str(error))  # exits with status 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            launcher = (f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']} -m lenet_triton.train"
                        if distributed.launched_by_torchrun() else "python -m lenet_triton.train")
            again = " ".join([launcher, *argv, *([] if args.resume else ["--resume"])])
            anywhere = " (with any number of processes)" if distributed.launched_by_torchrun() else ""
            print(f"to continue it: {again}{anywhere}", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
