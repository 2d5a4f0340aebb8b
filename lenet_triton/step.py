"""TrainStep: a whole LeNet training step (forward, mean cross-entropy, backward and the optimizer's
update) in two Triton launches.

    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    loss = step(images, labels)          # the parameters are updated in place

The optimizer stays an ordinary torch.optim.SGD or Adam: its hyperparameters are read at every
step (so a learning-rate scheduler keeps working), and its state lives in `optimizer.state` in
torch's own format (momentum_buffer; exp_avg, exp_avg_sq and step), so eager steps and TrainStep
steps can be mixed at any time. The step does not sync with the host and, after the first call
for a batch size, allocates nothing, so it can be captured in a CUDA graph: cuda_graph=True does
that and replays it with each new batch copied into static inputs.

Across ranks (torch.distributed initialized, or a process group given as `group`, of two or more
ranks), each rank passes its slice of the global batch and the step is:

1. the rank's forward, loss and backward, its programs' partial rows summed into one flat row of
   every parameter's gradient of the global batch's mean loss, with its loss (two launches; one,
   for a rank with no samples);
2. one collective over that row: all_gather (the default) or all_reduce;
3. the update, from the sum of the ranks' rows (one launch). After an all_gather every rank sums
   the rows in rank order with the same kernel, so the update repeats exactly, run to run, and is
   the same on every rank; all_reduce sums in the backend's own order.

So a distributed step is three launches and one collective. Under the default group=DEFAULT_GROUP a
world of one rank takes the usual two launches; a process group given explicitly always takes the
distributed path, even of one rank (which is how `python -m bench distributed` times the
collective's cost at world size 1).
"""

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops
from .kernels import config
from .kernels import lenet as fused
from .model import LeNet

SUPPORTED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam)
# Options whose non-default values the fused update does not compute, refused with a clear error.
_UNSUPPORTED_OPTIONS = {"maximize": False, "amsgrad": False, "differentiable": False,
                        "decoupled_weight_decay": False}
COLLECTIVES = ("all_gather", "all_reduce")
# TrainStep(group=...) default: the default process group when torch.distributed is initialized.
DEFAULT_GROUP = "default"


def _resolve_group(group):
    """The process group to step across, or None for one process: no group, or the default one when
    torch.distributed is not initialized or has one rank."""
    if group is None:
        return None
    if group == DEFAULT_GROUP:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return dist.group.WORLD
    return group


class TrainStep:
    """One fused training step of `model` (a LeNet, any backend) with `optimizer`.

    Calling it with images (N, C, 32, 32) and int64 labels (N,) in [0, num_classes) returns the mean
    cross-entropy as a 0-d tensor on the model's device, and updates every parameter in place as
    optimizer.step() would after loss.backward(). The returned tensor is reused: the next step with
    the same batch size overwrites it (call .item() or .clone() to keep a value). A label outside
    [0, num_classes) makes the loss and the update NaN rather than raising, since checking it would
    need a host sync. Gradients are not stored in p.grad.

    group: the process group to train across (see the module's docstring): "default" (torch's default
    group when torch.distributed is initialized), a group, or None for one process. collective:
    "all_gather" (exact, the same bits run to run) or "all_reduce" (one summed row, to tolerance).
    """

    def __init__(self, model: LeNet, optimizer: torch.optim.Optimizer, *, cuda_graph: bool = False,
                 group=DEFAULT_GROUP, collective: str = "all_gather"):
        if not isinstance(model, LeNet):
            raise TypeError(f"TrainStep: model must be a lenet_triton.LeNet, got {type(model).__name__}")
        if type(optimizer) not in SUPPORTED_OPTIMIZERS:
            raise TypeError(f"TrainStep: optimizer must be a torch.optim.SGD or torch.optim.Adam, got "
                            f"{type(optimizer).__name__}")
        params = model.fused_parameters()
        owned = [p for group in optimizer.param_groups for p in group["params"]]
        if len(owned) != len(params) or {id(p) for p in owned} != {id(p) for p in params}:
            raise ValueError("TrainStep: the optimizer must hold exactly the model's parameters, each once "
                             "(e.g. torch.optim.SGD(model.parameters(), ...))")
        if not all(p.requires_grad for p in params):
            raise ValueError("TrainStep: every parameter must require grad; the fused step updates all of them")
        if collective not in COLLECTIVES:
            raise ValueError(f"TrainStep: collective must be one of {', '.join(COLLECTIVES)}, got {collective!r}")
        self.group = _resolve_group(group)
        if self.group is not None and cuda_graph and dist.get_backend(self.group) != "nccl":
            raise ValueError(f"TrainStep: cuda_graph=True needs an NCCL process group; this one is "
                             f"{dist.get_backend(self.group)}, whose collectives run on the host, where a CUDA graph "
                             "cannot capture them")
        if cuda_graph and params[0].device.type != "cuda":
            raise ValueError(f"TrainStep: cuda_graph=True needs the model on a CUDA device; it is on "
                             f"{params[0].device}")
        self.collective = collective
        self.model, self.optimizer, self.cuda_graph = model, optimizer, cuda_graph
        self.update = "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"
        self._group_of = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._group_of[id(p)] = group
        self._buffers = {}     # batch size -> fused.TrainBuffers
        self._graphs = {}      # batch size -> (key, graph, static images, static labels)
        self._hyper = None
        self._hyper_values = None
        self._rows = self._loss = None   # across ranks: every rank's flat gradient row, the mean loss

    def __call__(self, images: Tensor, labels: Tensor, global_batch: int = None) -> Tensor:
        """One step on images (N, C, 32, 32) and labels (N,). Across ranks these are the rank's slice of
        a global batch of `global_batch` samples (by default N times the number of ranks); a rank's
        slice may be empty."""
        params = self.model.fused_parameters()
        x, _ = ops.check_lenet("TrainStep", images, params)
        if x is not images or images.dim() != 4:
            raise ValueError(f"TrainStep: images must be a contiguous 4-D (N, C, 32, 32) batch, got shape "
                             f"{tuple(images.shape)}" + ("" if images.dim() != 4 else " (not contiguous)"))
        if not all(p.is_contiguous() for p in params):
            raise ValueError("TrainStep: every parameter must be contiguous")
        self._check_labels(images, labels)
        batch = images.shape[0]
        if batch == 0 and self.group is None:
            raise ValueError("TrainStep: the batch is empty; the mean loss of no samples is undefined")
        ranks = 1 if self.group is None else dist.get_world_size(self.group)
        global_batch = batch * ranks if global_batch is None else global_batch
        if type(global_batch) is not int or global_batch < max(batch, 1):
            raise ValueError(f"TrainStep: global_batch must be an int of at least the {batch} samples given (and at "
                             f"least 1), got {global_batch!r}")
        if self.group is None and global_batch != batch:
            raise ValueError(f"TrainStep: global_batch {global_batch} is not the {batch} samples given; in one "
                             "process the batch is the global batch (pass group= to step across ranks)")
        buffers = self._buffers.get(batch)
        if buffers is None and batch > 0:
            buffers = self._buffers[batch] = fused.TrainBuffers(batch, images.shape[1], params[8].shape[0],
                                                                params[0])
        self._refresh_hyperparameters(params)
        state1, state2, steps, momentum = self._optimizer_state(params)
        arguments = (params, buffers, state1, state2, steps, momentum, global_batch)
        # This is the optimizer's step: tell a learning-rate scheduler so, as optimizer.step() would
        # (otherwise its first scheduler.step() warns that the optimizer never stepped).
        self.optimizer._opt_called = True
        if not self.cuda_graph:
            return self._launch(images, labels, *arguments)
        return self._graph_step(images, labels, arguments)

    # -- the step -----------------------------------------------------------------------------

    def _launch(self, images, labels, params, buffers, state1, state2, steps, momentum, global_batch):
        """The step's launches; returns the tensor the mean loss lands in."""
        if self.group is None:
            fused.train_step(images, labels, params, buffers, self.update, state1, state2, steps, self._hyper,
                             momentum)
            return buffers.loss
        row, rows = self._exchange_buffers(params)
        fused.rank_row(images, labels, params, buffers, row, steps, global_batch, increment_steps=self.update == "adam")
        if self.collective == "all_gather":
            dist.all_gather(list(rows), row, group=self.group)
        else:
            dist.all_reduce(row, group=self.group)
        fused.apply_rows(rows, params, state1, state2, steps, self._hyper, self.update, momentum, self._loss)
        return self._loss

    def _exchange_buffers(self, params):
        """(this rank's flat row, the rows the update sums: every rank's after an all_gather, the one
        summed row after an all_reduce), allocated once."""
        if self._rows is None:
            total = sum(p.numel() for p in params)
            like = params[0]
            row = config.partial_buffer((total + 1,), like)
            ranks = dist.get_world_size(self.group)
            self._rows = (row, config.partial_buffer((ranks, total + 1), like) if self.collective == "all_gather"
                          else row[None])
            self._loss = torch.empty((), dtype=like.dtype, device=like.device)
        return self._rows

    def _graph_step(self, images, labels, arguments):
        """Replays the captured step when nothing it depends on changed; otherwise runs this step
        eagerly and, once a step's plan repeats, captures the next one."""
        params, buffers, state1, state2, steps, momentum, global_batch = arguments
        batch = images.shape[0]
        key = (momentum, global_batch, *(t.data_ptr() for t in (*params, *state1, *state2, *steps, self._hyper)))
        captured = self._graphs.get(batch)
        if captured is not None and captured[0] == key:
            _, graph, static_images, static_labels, loss = captured
            static_images.copy_(images)
            static_labels.copy_(labels)
            graph.replay()
            return loss
        static_images = torch.empty_like(images)
        static_labels = torch.empty_like(labels)
        static_images.copy_(images)
        static_labels.copy_(labels)
        loss = self._launch(static_images, static_labels, *arguments)
        # The step just run compiled every kernel; capture when the next step plans the same way (an
        # SGD momentum buffer's first step differs from the rest).
        next_state = self._optimizer_state(params)
        if next_state[3] == momentum:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch(static_images, static_labels, params, buffers, *next_state, global_batch)
            self._graphs[batch] = (key, graph, static_images, static_labels, loss)
        return loss

    # -- torch.optim state and hyperparameters ------------------------------------------------

    def _check_labels(self, images, labels):
        if not isinstance(labels, Tensor):
            raise TypeError(f"TrainStep: labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype != torch.int64:
            raise TypeError(f"TrainStep: labels must be int64 class indices, got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"TrainStep: labels must have shape ({images.shape[0]},) to match the images, got "
                             f"{tuple(labels.shape)}")
        if labels.device != images.device or not labels.is_contiguous():
            raise ValueError(f"TrainStep: labels must be a contiguous tensor on {images.device}, got one on "
                             f"{labels.device}")

    def _group(self, p):
        group = self._group_of[id(p)]
        for option, default in _UNSUPPORTED_OPTIONS.items():
            if group.get(option, default) != default:
                raise NotImplementedError(f"TrainStep: {type(self.optimizer).__name__}({option}="
                                          f"{group[option]!r}) is not supported by the fused update")
        return group

    def _refresh_hyperparameters(self, params):
        """One float64 row per parameter (kernels.lenet SGD_FIELDS / ADAM_FIELDS), sent to the device
        only when a value changed, so that a steady step moves nothing from the host."""
        rows = []
        for p in params:
            group = self._group(p)
            if self.update == "sgd":
                rows.append([float(group["lr"]), group["momentum"], group["dampening"], float(group["nesterov"]),
                             group["weight_decay"]])
            else:
                beta1, beta2 = group["betas"]
                rows.append([float(group["lr"]), float(beta1), float(beta2), group["eps"], group["weight_decay"]])
        if rows != self._hyper_values:
            values = torch.tensor(rows, dtype=torch.float64)
            if self._hyper is None:
                self._hyper = values.to(params[0].device)
            else:
                self._hyper.copy_(values)
            self._hyper_values = rows

    def _optimizer_state(self, params):
        """(state1, state2, steps, momentum flags) per parameter, creating torch's state where it is
        missing: for SGD the momentum_buffer (flag 2: the kernel starts it as torch's first step
        does), for Adam zeroed exp_avg and exp_avg_sq and a step count on the parameter's device."""
        state1, state2, steps, momentum = [], [], [], []
        for p in params:
            state = self.optimizer.state[p]
            if self.update == "sgd":
                if self._group(p)["momentum"] == 0:
                    state1.append(p)
                    momentum.append(0)
                else:
                    buffer = state.get("momentum_buffer")
                    momentum.append(1 if buffer is not None else 2)
                    if buffer is None:
                        state["momentum_buffer"] = torch.empty_like(p)
                    state1.append(_adopt(state, "momentum_buffer", p))
                state2.append(p)
                steps.append(p)
            else:
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.get_default_dtype(), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state1.append(_adopt(state, "exp_avg", p))
                state2.append(_adopt(state, "exp_avg_sq", p))
                steps.append(_adopt(state, "step", p, scalar=True))
                momentum.append(0)
        return tuple(state1), tuple(state2), tuple(steps), tuple(momentum)


def _adopt(state, key, p, scalar=False):
    """state[key] as the kernels read it: on p's device and contiguous, shaped like p (or 0-d for a
    step count). Anything else (torch's CPU Adam step, a state loaded from elsewhere) is replaced in
    the optimizer's state by a converted copy, once, so torch and TrainStep keep sharing it."""
    tensor = state[key]
    shape = () if scalar else p.shape
    if tensor.device == p.device and tensor.shape == shape and tensor.is_contiguous():
        return tensor
    converted = tensor.detach().to(p.device).reshape(shape).contiguous()
    state[key] = converted
    return converted
