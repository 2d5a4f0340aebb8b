"""Training: every backend (and the fused TrainStep) agrees with torch step by step, the CLI writes its files, bad options fail early."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from functools import partial

import pytest
import torch
from tqdm import tqdm

from lenet_triton import LeNet, TrainStep, train
from lenet_triton import datasets as data
from lenet_triton.datasets import cifar10
from lenet_triton.testing import TOLERANCES
from conftest import DEVICE
from test_cifar10 import CLASSES, _batches, _binary_files, _python_files, _write
from test_model import TutorialNet

ROOT = Path(__file__).resolve().parents[1]

# Step-by-step loss agreement between backends: float32 kernels sum in a different order than
# torch, so each loss may differ by the float32 tolerance; five steps do not amplify that visibly.
CONVERGENCE_STEPS = 5
LOSS_ATOL, LOSS_RTOL = TOLERANCES[torch.float32]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_backends_give_the_same_losses_step_by_step(optimizer):
    train_split, _ = data.load("digits")
    losses = {}
    for backend, fused_step in (("torch", False), ("triton", False), ("fused", False), ("fused", True)):
        torch.manual_seed(0)
        model = LeNet(backend=backend).to(DEVICE)
        opt = train.make_optimizer(optimizer, model.parameters(), lr=0.01 if optimizer == "sgd" else 1e-3,
                                   momentum=0.9)
        step = TrainStep(model, opt) if fused_step else partial(train.train_step, model, opt)
        shuffle = torch.Generator().manual_seed(0)
        steps = zip(range(CONVERGENCE_STEPS), train.batches(train_split, 16, shuffle))
        name = backend + (" + TrainStep" if fused_step else "")
        losses[name] = torch.stack([step(x.to(DEVICE), y.to(DEVICE)).clone() for _, (x, y) in steps])
        print(f"{name:18}", losses[name].tolist())
    for name, values in losses.items():
        assert len(set(values.tolist())) == CONVERGENCE_STEPS, f"{name}: each step should change the model"
        torch.testing.assert_close(values, losses["torch"], atol=LOSS_ATOL, rtol=LOSS_RTOL, msg=name)


@pytest.mark.torch_only
def test_evaluate_counts_what_argmax_says():
    """evaluate's loss, accuracy and per-class accuracy against a direct count over the whole split,
    with one class absent (its accuracy is None)."""
    train_split, test_split = _small_digits(SHORT_RUN_IMAGES)
    keep = test_split.labels != 9
    split = data.Split(test_split.images[keep], test_split.labels[keep])
    model = LeNet(backend="torch")
    optimizer = train.make_optimizer("adam", model.parameters(), lr=2e-3, momentum=0)
    for images, labels in train.batches(train_split, 16):   # a model that tells some digits apart
        train.train_step(model, optimizer, images, labels)
    loss, accuracy, per_class = train.evaluate(model, split, "cpu")
    with torch.no_grad():
        logits = model(split.images)
    predicted = logits.argmax(1)
    assert len(predicted.unique()) > 1, "a model that predicts one class checks little"
    assert accuracy == (predicted == split.labels).sum().item() / len(split)
    for index, name in enumerate(split.classes):
        members = split.labels == index
        expected = (predicted[members] == index).sum().item() / members.sum().item() if members.any() else None
        assert per_class[name] == expected, name
    assert per_class[split.classes[9]] is None
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, split.labels).item(), rel=1e-6)


def _small_digits(count=96):
    train_split, test_split = data.load_digits()
    return (data.Split(train_split.images[:count], train_split.labels[:count]),
            data.Split(test_split.images[:count // 2], test_split.labels[:count // 2]))


# A short run that must learn: 192 training images in batches of 15 (a smaller last batch each
# epoch), two epochs. The torch backend reaches 68% on the 96 test images this way (chance: 10%).
SHORT_RUN_IMAGES, SHORT_RUN_ARGS = 192, ["--epochs", "2", "--batch-size", "15"]
SHORT_RUN_ACCURACY_FLOOR = 0.5


@pytest.mark.parametrize("options", [[], ["--backend", "fused", "--fused-step"]], ids=["default", "fused-step"])
def test_train_writes_checkpoint_metrics_and_curves(tmp_path, monkeypatch, capsys, options):
    monkeypatch.setattr(data, "load", lambda name, data_dir=None: _small_digits(SHORT_RUN_IMAGES))
    args = train.build_parser().parse_args([*SHORT_RUN_ARGS, "--out-dir", str(tmp_path), *options])
    metrics = train.train(args)
    assert metrics["final_test_accuracy"] >= SHORT_RUN_ACCURACY_FLOOR, metrics["epochs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "curves.png", "metrics.json", "resume.pt"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert [e["epoch"] for e in written["epochs"]] == [1, 2]
    for epoch in written["epochs"]:
        assert set(epoch) == {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds"}
        assert epoch["seconds"] > 0
    assert written["backend"] == (options[1] if options else "triton")
    assert written["fused_step"] == ("--fused-step" in options) and {"torch", "triton", "lenet_triton"} <= set(written["versions"])
    reached = train.time_to_target(written["epochs"]) or (None, None)
    assert [written["epochs_to_target"], written["seconds_to_target"]] == list(reached)
    assert written["target_accuracy"] == train.TARGET_ACCURACY
    assert capsys.readouterr().out.splitlines()[-1] == train.target_summary(written)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    TutorialNet().load_state_dict(torch.load(tmp_path / "checkpoint.pt"))  # a plain state_dict


@pytest.mark.parametrize("options", [pytest.param(["--backend", "torch"], marks=pytest.mark.torch_only),
                                     ["--backend", "triton"], ["--backend", "fused", "--fused-step"]],
                         ids=["torch", "triton", "fused-step"])
def test_cifar10_trains_with_three_channels_on_every_backend(tmp_path, capsys, options):
    """A small CIFAR-10 in the binary archive (test_cifar10's files): the model takes 3 channels, and
    the checkpoint loads into the tutorial's 3-channel Net."""
    _write(tmp_path, cifar10.BINARY_VERSION, _binary_files(_batches()), archive=True)
    out = tmp_path / "run"
    assert train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
                       "--out-dir", str(out), *options]) == 0
    assert "cifar10 (35 train / 7 test images)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "cifar10"
    TutorialNet(in_channels=3).load_state_dict(torch.load(out / "checkpoint.pt"))


def test_tutorial_recipe_prints_what_the_tutorial_prints(tmp_path, capsys):
    """--recipe tutorial-cifar10 with the fused TrainStep (the recipe's batch of 4; the running loss
    every 4 mini-batches here instead of 2000, and one epoch: options given still win)."""
    _write(tmp_path, cifar10.PYTHON_VERSION, _python_files(_batches()))
    out = tmp_path / "run"
    argv = ["--recipe", "tutorial-cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--log-every", "4",
            "--backend", "fused", "--fused-step", "--out-dir", str(out)]
    args = train.parse_args(argv)
    assert (args.dataset, args.optimizer, args.lr, args.momentum, args.batch_size, args.epochs, args.log_every) == \
        ("cifar10", "sgd", 0.001, 0.9, 4, 1, 4)
    metrics = train.train(args)
    printed = capsys.readouterr().out.splitlines()
    running = [line for line in printed if line.startswith("[1, ")]
    assert [line[:10] for line in running] == ["[1,     4]", "[1,     8]"], printed   # 35 images: 9 mini-batches
    assert all(float(line.split("loss: ")[1]) > 0 for line in running)
    accuracy = round(metrics["final_test_accuracy"] * 7)
    assert f"Accuracy of the network on the 7 test images: {100 * accuracy // 7} %" in printed
    per_class = [line for line in printed if line.startswith("Accuracy for class: ")]
    assert [line.split()[3] for line in per_class] == list(CLASSES), per_class
    assert list(metrics["final_class_accuracy"]) == list(CLASSES)
    assert json.loads((out / "metrics.json").read_text())["final_class_accuracy"] == metrics["final_class_accuracy"]
    TutorialNet(in_channels=3).load_state_dict(torch.load(out / "checkpoint.pt"))


def _without_tqdm_monitor(monkeypatch):
    """Stops tqdm's monitor thread (which the first progress bar in a process starts) for the rest of
    the test: it takes tqdm's lock now and then, and a child forked while it held it would wait for
    that lock forever at its first progress bar."""
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    if tqdm.monitor is not None:
        tqdm.monitor.exit()
        tqdm.monitor.join()
        tqdm.monitor = None


def _start_training(argv):
    """`python -m lenet_triton.train argv` in a child process: (its pid, its output as a text stream,
    a function that waits for it and returns its exit code, minus the signal that ended it).

    On the CPU the child is forked from this process, which has done the imports that a new
    interpreter would spend seconds on; this process must have no other thread then (one holding a
    lock would hold it in the child forever). A forked child cannot use CUDA once this process has,
    so with CUDA it is a new interpreter. Either way its lines come through the pipe one at a time
    only as train flushes them."""
    if DEVICE == "cuda":
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        process = subprocess.Popen([sys.executable, "-m", "lenet_triton.train", *argv], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return process.pid, process.stdout, lambda: process.wait(timeout=300)
    assert threading.active_count() == 1, f"threads that a fork would copy: {threading.enumerate()}"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            # tqdm's default lock includes a semaphore that forked processes share: a child killed
            # while it held it would leave every later progress bar waiting for it.
            tqdm.set_lock(threading.RLock())
            code = train.main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write_end)
    return pid, open(read_end), lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _train_in_a_child(argv, lines=None, signum=None):
    """Runs training (_start_training) and sends it `signum` once it has printed `lines` running-loss
    lines; returns its exit code and its output."""
    pid, stream, wait = _start_training(argv)
    output, seen = [], 0
    with stream:
        for line in stream:
            output.append(line)
            seen += line.startswith("[")
            if seen == lines:
                os.kill(pid, signum)
                break
        output += stream.readlines()
    return wait(), "".join(output)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("torch", marks=pytest.mark.torch_only), "triton"])
def test_a_run_killed_and_interrupted_resumes_to_exactly_the_same_weights(tmp_path, monkeypatch, backend):
    """SIGKILL in the middle of the first epoch, SIGKILL again about its end (evaluation or the epoch's
    resume.pt), Ctrl-C in the second, then --resume to the end: the same weights, bit for bit, as a
    run that never stopped (resume.pt every 2 mini-batches). A signal lands a little after the line
    that triggers it, so each process has many mini-batches left then: the torch backend's take
    milliseconds, so it gets 125 an epoch; the interpreter's take a fifth of a second, so 9."""
    _without_tqdm_monitor(monkeypatch)
    records = 100 if backend == "torch" else 7
    steps = (5 * records + 3) // 4   # mini-batches of 4 in an epoch
    _write(tmp_path, cifar10.BINARY_VERSION, _binary_files(_batches(records=records)))
    options = ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--backend", backend, "--epochs", "2",
               "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.05", "--log-every", "1", "--checkpoint-every", "2"]
    assert train.main([*options, "--out-dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "stopped"
    argv = [*options, "--out-dir", str(out)]
    code, _ = _train_in_a_child(argv, 5, signal.SIGKILL)
    assert code == -signal.SIGKILL and (out / "resume.pt").is_file()
    code, printed = _train_in_a_child([*argv, "--resume"], steps - 4, signal.SIGKILL)   # to about the epoch's end
    assert code == -signal.SIGKILL and "resuming from" in printed, printed
    code, printed = _train_in_a_child([*argv, "--resume"], 3, signal.SIGINT)
    assert code == 130 and "interrupted in epoch" in printed, printed
    assert f"to continue it: python -m lenet_triton.train {' '.join(options)} --out-dir {out} --resume" in printed
    code, printed = _train_in_a_child([*argv, "--resume"])
    assert code == 0 and "resuming from" in printed, printed
    whole, resumed = (torch.load(d / "checkpoint.pt") for d in (tmp_path / "whole", out))
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), f"{name} differs after the resumed run"
    epochs = [json.loads((d / "metrics.json").read_text())["epochs"] for d in (tmp_path / "whole", out)]
    assert [e["train_loss"] for e in epochs[0]] == [e["train_loss"] for e in epochs[1]]


@pytest.mark.torch_only
def test_the_first_ctrl_c_waits_for_the_step_and_a_second_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    stop = train._StopAfterTheStep()
    try:
        os.kill(os.getpid(), signal.SIGINT)   # the first: noted, nothing interrupted
        assert stop.requested and not stop.forced
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)   # the second: at once, and the run knows it was forced
        assert stop.forced
        with pytest.raises(KeyboardInterrupt):
            stop.check()
    finally:
        stop.release()
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.torch_only
def test_resume_refuses_other_options_and_a_finished_run(tmp_path, capsys):
    _write(tmp_path, cifar10.BINARY_VERSION, _binary_files(_batches()))
    options = ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--backend", "torch", "--epochs", "1",
               "--out-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        train.main([*options, "--resume"])
    assert "there is no resume.pt in --out-dir" in capsys.readouterr().err
    assert train.main(options) == 0
    with pytest.raises(SystemExit):
        train.main([*options, "--resume", "--lr", "0.5"])
    assert "was written with other options: --lr 0.002 (now 0.5)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main([*options, "--resume"])
    assert "already finished its 1 epochs" in capsys.readouterr().err
    assert train.main([*options[:-4], "--epochs", "2", *options[-2:], "--resume"]) == 0
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]) == 2


@pytest.mark.torch_only
def test_the_recipe_gives_defaults_and_the_command_line_wins():
    args = train.parse_args(["--recipe", "tutorial-cifar10", "--data-dir", "d"])
    assert (args.dataset, args.optimizer, args.lr, args.momentum, args.batch_size, args.epochs, args.log_every) == \
        ("cifar10", "sgd", 0.001, 0.9, 4, 2, 2000)
    assert train.parse_args(["--recipe", "tutorial-cifar10", "--lr", "0.01", "--batch-size", "8"]).lr == 0.01
    assert train.parse_args([]).dataset == "digits" and train.parse_args([]).log_every == 0


@pytest.mark.torch_only
def test_time_to_target_counts_every_epoch_up_to_the_first_that_reaches_it():
    epochs = [{"epoch": 1, "seconds": 4.0, "test_accuracy": 0.90}, {"epoch": 2, "seconds": 1.5, "test_accuracy": 0.96},
              {"epoch": 3, "seconds": 1.0, "test_accuracy": 0.94}, {"epoch": 4, "seconds": 1.0, "test_accuracy": 0.97}]
    assert train.time_to_target(epochs, 0.95) == (2, 5.5)
    assert train.time_to_target(epochs, 0.90) == (1, 4.0)
    assert train.time_to_target(epochs, 0.98) is None


@pytest.mark.torch_only
def test_target_summary_says_when_or_whether_the_target_was_reached():
    metrics = {"target_accuracy": 0.95, "epochs": [{}, {}, {}], "epochs_to_target": 2, "seconds_to_target": 5.54}
    assert train.target_summary(metrics) == "reached 95% test accuracy after epoch 2, 5.5 s from the start"
    missed = dict(metrics, epochs_to_target=None, seconds_to_target=None)
    assert train.target_summary(missed) == "did not reach 95% test accuracy in 3 epochs"
    assert train.target_summary(dict(missed, epochs=[{}])) == "did not reach 95% test accuracy in 1 epoch"


BAD_OPTIONS = [
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--backend", "cudnn"], "invalid choice: 'cudnn'"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--momentum", "1.5", "--optimizer", "sgd"], "--momentum must be in"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "--device: cuda"),
    (["--device", "tpu"], "--device"),
    (["--dataset", "mnist"], "needs --data-dir"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent"], "does not exist"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "does not exist"),
    (["--data-dir", "/tmp"], "--data-dir is only read with --dataset mnist or cifar10"),
    (["--recipe", "tutorial-cifar10"], "--dataset cifar10 needs --data-dir"),
    (["--log-every", "-1"], "--log-every must be >= 0"),
    (["--dist-backend", "gloo"], "--dist-backend is only read under torchrun"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
]


@pytest.mark.torch_only
@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_fail_before_any_work(tmp_path, capsys, argv, message):
    out_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main([*argv, "--out-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    assert message in captured.err, captured.err
    assert "epoch" not in captured.out and not out_dir.exists()


@pytest.mark.torch_only
def test_cli_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "lenet_triton.train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--batch-size" in done.stdout and "--data-dir" in done.stdout, done.stderr
