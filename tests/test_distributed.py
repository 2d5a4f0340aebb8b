"""Data-parallel training on torch.distributed (lenet_triton.distributed): TrainStep and the DDP
backends across two gloo ranks against one process, torchrun around the training CLI, resuming at
another world size, and a rank that dies.

The kernel checks share one process group of two forked ranks (tests/distributed_checks.py); the
torchrun runs use the torch backend (no kernel), so they run once, in the torch-only stage.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lenet_triton import distributed
from lenet_triton.testing import assert_close
from distributed_checks import OPTIMIZERS, run_group

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks computed (rank 0 also one process's runs)."""
    return run_group(tmp_path_factory.mktemp("group"))


def _same_bits(a: dict, b: dict) -> bool:
    tensors = lambda state: [*state["parameters"], *(v for s in state["optimizer"] for v in s.values()),  # noqa: E731
                             state["losses"]]
    return all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))


def _close(ours: dict, expected: dict, where: str) -> None:
    """Losses, parameters and optimizer state within the float64 tolerance."""
    assert_close(ours["losses"], expected["losses"], f"{where}: losses")
    for i, (a, b) in enumerate(zip(ours["parameters"], expected["parameters"])):
        assert_close(a, b, f"{where}: parameter {i}")
    for i, (a, b) in enumerate(zip(ours["optimizer"], expected["optimizer"])):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key].double(), b[key].double(), f"{where}: parameter {i} {key}")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_step_across_two_ranks_matches_one_process(ranks, optimizer):
    """Ten steps of uneven global batches (one leaves rank 1 with no samples), float64."""
    _close(ranks[0][f"train_step {optimizer}"], ranks[0][f"one process train_step {optimizer}"],
           f"TrainStep {optimizer}, 2 ranks")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_step_ranks_hold_the_same_bits(ranks, optimizer):
    assert _same_bits(ranks[0][f"train_step {optimizer}"], ranks[1][f"train_step {optimizer}"])


def test_train_step_repeats_exactly_run_to_run(ranks):
    for rank in ranks:
        assert _same_bits(rank["train_step adam"], rank["train_step adam again"])


def test_train_step_with_all_reduce_matches_to_tolerance(ranks):
    _close(ranks[0]["train_step sgd-nesterov all_reduce"], ranks[0]["one process train_step sgd-nesterov"],
           "TrainStep all_reduce, 2 ranks")


@pytest.mark.parametrize("backend", ["triton", "fused"])
def test_ddp_backends_match_one_process(ranks, backend):
    """The model's own backward under DistributedDataParallel, the loss scaled by each rank's share."""
    _close(ranks[0][f"ddp {backend}"], ranks[0][f"one process ddp {backend}"], f"DDP {backend}, 2 ranks")
    assert _same_bits(ranks[0][f"ddp {backend}"], ranks[1][f"ddp {backend}"])


def test_torch_compile_around_ddp_keeps_the_custom_ops_working(ranks):
    """torch.compile of a DistributedDataParallel model on the per-op kernels: DDP's graph split and
    the lenet_triton custom ops together, against one process without either."""
    _close(ranks[0]["ddp triton compiled"], ranks[0]["one process ddp triton"], "compiled DDP triton, 2 ranks")
    assert _same_bits(ranks[0]["ddp triton compiled"], ranks[1]["ddp triton compiled"])


def test_launches_per_step_are_those_the_docs_give(ranks):
    """lenet_triton/step.py: three launches and one collective across ranks (two for a rank with no
    samples), the usual two in one process; an explicit group of one rank takes the distributed path."""
    assert ranks[0]["launches"] == {"ranks batch 4": 3, "ranks batch 1": 3, "one process": 2, "group of one": 3}
    assert ranks[1]["launches"] == {"ranks batch 4": 3, "ranks batch 1": 2}


def test_an_explicit_group_of_one_rank_matches_one_process(ranks):
    _close(ranks[0]["train_step adam group of one"], ranks[0]["one process train_step adam"],
           "TrainStep adam, a group of one rank")


def test_mismatched_options_and_a_gloo_cuda_graph_are_refused(ranks):
    for rank, other in ((0, 1), (1, 0)):
        message = ranks[rank]["refusals"]["options"]
        assert f"rank {other} was started with other options than rank {rank}: --lr " in message, message
    assert "cuda_graph=True needs an NCCL process group; this one is gloo" in ranks[0]["refusals"]["cuda_graph"]


# ------------------------------------------------------------------------------------------------
# Without a group
# ------------------------------------------------------------------------------------------------

@pytest.mark.torch_only
def test_each_sample_of_a_global_batch_goes_to_exactly_one_rank():
    for batch in range(0, 40):
        for world in range(1, 6):
            slices = [distributed.share(batch, world, rank) for rank in range(world)]
            covered = [i for piece in slices for i in range(batch)[piece]]
            assert covered == list(range(batch)), (batch, world)
            sizes = [piece.stop - piece.start for piece in slices]
            assert max(sizes) - min(sizes) <= 1, (batch, world, sizes)


@pytest.mark.torch_only
def test_a_global_batch_smaller_than_the_world_and_nccl_without_cuda_are_refused():
    with pytest.raises(ValueError, match="--batch-size 3 is smaller than the 4 processes"):
        distributed.check_batch_size(3, 4)
    distributed.check_batch_size(4, 4)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--dist-backend nccl needs CUDA devices, and this machine has none"):
            distributed.choose_backend("nccl", torch.device("cpu"))
    assert distributed.choose_backend(None, torch.device("cpu")) == "gloo"



@pytest.mark.torch_only
def test_train_step_refuses_a_global_batch_that_does_not_fit():
    """In one process the batch is the global batch; a global batch is an int of at least the samples
    given. Refused before any kernel runs (the torch_only guard would catch a launch)."""
    from lenet_triton import LeNet, TrainStep

    model = LeNet(backend="fused")
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), group=None)
    images, labels = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="global_batch 8 is not the 4 samples given; in one process"):
        step(images, labels, global_batch=8)
    for bad in (3, 4.0):
        with pytest.raises(ValueError, match="global_batch must be an int of at least the 4 samples given"):
            step(images, labels, global_batch=bad)

# ------------------------------------------------------------------------------------------------
# torchrun around the training CLI (torch backend: no kernel runs)
# ------------------------------------------------------------------------------------------------

def _torchrun(processes: int, *options, timeout=600, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "lenet_triton.train", *options]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(command, cwd=ROOT, env=env, **popen)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _one_process(*options) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "lenet_triton.train", *options], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.torch_only
def test_torchrun_trains_with_rank_0_alone_writing(tmp_path):
    """One epoch on the digits at 2 ranks against one process. Both sum each global batch's gradient
    over the same samples, in another order, so in float32 the weights differ by rounding only: the
    losses agree to 1e-4 and the test accuracy to one image in 360 (0.3%)."""
    two, one = tmp_path / "two", tmp_path / "one"
    options = ["--backend", "torch", "--epochs", "1", "--batch-size", "64"]
    done = _torchrun(2, *options, "--out-dir", str(two))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("training LeNet") == 1 and "2 processes (gloo)" in done.stdout, done.stdout
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.json", "resume.pt"]
    assert _one_process(*options, "--out-dir", str(one)).returncode == 0
    import json
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert ours["world_size"] == 2 and ours["dist_backend"] == "gloo" and theirs["world_size"] == 1
    for key in ("train_loss", "test_loss"):
        assert abs(ours["epochs"][0][key] - theirs["epochs"][0][key]) < 1e-4, (key, ours["epochs"], theirs["epochs"])
    assert abs(ours["epochs"][0]["test_accuracy"] - theirs["epochs"][0]["test_accuracy"]) <= 1 / 360 + 1e-9


@pytest.mark.torch_only
def test_a_run_at_two_ranks_resumes_at_one(tmp_path):
    """Epoch 1 at 2 ranks, epoch 2 resumed in one process: the same weights, in float64, as 2 epochs
    in one process."""
    options = ["--backend", "torch", "--dtype", "float64", "--batch-size", "50", "--optimizer", "sgd",
               "--lr", "0.05"]
    done = _torchrun(2, *options, "--epochs", "1", "--out-dir", str(tmp_path / "split"))
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _one_process(*options, "--epochs", "2", "--resume", "--out-dir", str(tmp_path / "split"))
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-3000:]
    whole = _one_process(*options, "--epochs", "2", "--out-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    ours, theirs = (torch.load(tmp_path / d / "checkpoint.pt") for d in ("split", "whole"))
    for name in theirs:
        assert_close(ours[name], theirs[name], f"resumed at 1 rank: {name}")


def _children(pid: int) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


@pytest.mark.torch_only
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_makes_the_run_fail_within_60_seconds(tmp_path):
    launcher = _torchrun(2, "--backend", "torch", "--epochs", "1000", "--out-dir", str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "resume.pt").exists():
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2, f"torchrun's workers: {workers}"
        killed = time.monotonic()
        os.kill(workers[1], signal.SIGKILL)
        code = launcher.wait(timeout=60)
        assert code != 0 and time.monotonic() - killed < 60
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                    and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]], "a worker outlived the run"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()


@pytest.mark.torch_only
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_mini_batch_and_resumes_at_one(tmp_path):
    """SIGINT to rank 1 alone: both ranks stop after the same mini-batch and rank 0 writes resume.pt;
    one process then finishes the run, and its weights are those of a run that never stopped (float64)."""
    options = ["--backend", "torch", "--dtype", "float64", "--batch-size", "50", "--optimizer", "sgd",
               "--lr", "0.05", "--checkpoint-every", "5"]
    run = tmp_path / "stopped"
    launcher = _torchrun(2, *options, "--epochs", "1000", "--out-dir", str(run), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / "resume.pt").exists():
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2, f"torchrun's workers: {workers}"
        os.kill(workers[1], signal.SIGINT)
        out, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert "interrupted in epoch" in out and "to continue it: torchrun --nproc-per-node 2" in out, out[-3000:]
    stopped = torch.load(run / "resume.pt", weights_only=True)
    epochs = ["--epochs", str(stopped["epoch"] + 1)]
    resumed = _one_process(*options, *epochs, "--resume", "--out-dir", str(run))
    assert resumed.returncode == 0 and f"after mini-batch {stopped['done']}" in resumed.stdout, resumed.stderr[-3000:]
    whole = _one_process(*options, *epochs, "--out-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    ours, theirs = (torch.load(d / "checkpoint.pt") for d in (run, tmp_path / "whole"))
    for name in theirs:
        assert_close(ours[name], theirs[name], f"stopped at 2 ranks, finished at 1: {name}")
