"""PyTorch's "Neural Networks" tutorial, step by step, on lenet_triton's LeNet.

Every step of the tutorial runs on LeNet (Triton kernels) and, for comparison, on the tutorial's
own Net (plain torch) loaded with the same weights. Each step prints both results and checks that
they agree; any disagreement raises. Then the CIFAR-10 tutorial's 3-channel training loop
(CrossEntropyLoss, SGD with momentum) runs on both, on random images so that nothing is
downloaded.

    python examples/tutorial_walkthrough.py
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lenet_triton import LeNet  # noqa: E402
from lenet_triton.testing import assert_close  # noqa: E402

# The tutorial runs on the CPU; with a CUDA device the Triton kernels are compiled for it instead.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TutorialNet(nn.Module):
    """The tutorial's Net, as the tutorial writes it: the reference LeNet is compared with."""

    def __init__(self, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, input):
        c1 = F.relu(self.conv1(input))
        s2 = F.max_pool2d(c1, (2, 2))
        c3 = F.relu(self.conv2(s2))
        s4 = F.max_pool2d(c3, 2)
        s4 = torch.flatten(s4, 1)
        f5 = F.relu(self.fc1(s4))
        f6 = F.relu(self.fc2(f5))
        return self.fc3(f6)


def step(title):
    print(f"\n== {title}")


def check_same(name, ours, reference):
    assert_close(ours, reference, name)
    print(f"   {name}: matches the tutorial's Net (max abs diff {(ours - reference).abs().max().item():.2e})")


def check_grads(name, net, ref):
    for (param_name, p), q in zip(net.named_parameters(), ref.parameters()):
        check_same(f"{name} {param_name}.grad", p.grad, q.grad)


def neural_networks_tutorial():
    torch.manual_seed(0)
    net = LeNet().to(DEVICE)
    ref = TutorialNet().to(DEVICE)
    ref.load_state_dict(net.state_dict())

    step("Define the network")
    print(net)

    step("The learnable parameters")
    params = list(net.parameters())
    print(len(params), params[0].size())
    assert len(params) == 10 and params[0].size() == (6, 1, 5, 5)

    step("A random 32x32 input")
    input = torch.randn(1, 1, 32, 32, device=DEVICE)
    out = net(input)
    print(out)
    check_same("output", out, ref(input))

    step("Zero the gradients and backprop random gradients")
    net.zero_grad()
    ref.zero_grad()
    upstream = torch.randn(1, 10, device=DEVICE)
    out.backward(upstream)
    ref(input).backward(upstream)
    check_grads("backward(randn)", net, ref)

    step("Loss function: MSELoss")
    target = torch.randn(10, device=DEVICE).view(1, -1)
    criterion = nn.MSELoss()
    loss = criterion(net(input), target)
    ref_loss = criterion(ref(input), target)
    print(loss)
    check_same("MSE loss", loss, ref_loss)
    print(loss.grad_fn)                                   # MSELoss
    print(loss.grad_fn.next_functions[0][0])              # the last linear layer
    print(loss.grad_fn.next_functions[0][0].next_functions[0][0])
    assert type(loss.grad_fn).__name__ == "MseLossBackward0"

    step("Backprop: conv1.bias.grad before and after backward")
    net.zero_grad()
    ref.zero_grad()
    print("conv1.bias.grad before backward", net.conv1.bias.grad)
    assert net.conv1.bias.grad is None or not net.conv1.bias.grad.any()
    loss.backward()
    ref_loss.backward()
    print("conv1.bias.grad after backward", net.conv1.bias.grad)
    check_same("conv1.bias.grad", net.conv1.bias.grad, ref.conv1.bias.grad)
    check_grads("MSE backward", net, ref)

    step("Update the weights by hand: weight = weight - learning_rate * gradient")
    learning_rate = 0.01
    for model in (net, ref):
        for f in model.parameters():
            f.data.sub_(f.grad.data * learning_rate)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        check_same(f"updated {name}", p, q)

    step("torch.optim.SGD")
    optimizer = optim.SGD(net.parameters(), lr=0.01)
    ref_optimizer = optim.SGD(ref.parameters(), lr=0.01)
    for model, opt in ((net, optimizer), (ref, ref_optimizer)):
        opt.zero_grad()
        output = model(input)
        loss = criterion(output, target)
        loss.backward()
        opt.step()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        check_same(f"after optimizer.step {name}", p, q)
    return net, ref


def cifar_training_loop(steps=4, batch_size=4):
    """The CIFAR-10 tutorial's loop on a 3-channel LeNet, on random images and labels."""
    step(f"CIFAR-10 tutorial loop: 3 channels, CrossEntropyLoss, SGD(lr=0.001, momentum=0.9), {steps} steps")
    torch.manual_seed(1)
    net = LeNet(in_channels=3).to(DEVICE)
    ref = TutorialNet(in_channels=3).to(DEVICE)
    ref.load_state_dict(net.state_dict())
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    ref_optimizer = optim.SGD(ref.parameters(), lr=0.001, momentum=0.9)
    losses = []
    for i in range(steps):
        inputs = torch.randn(batch_size, 3, 32, 32, device=DEVICE)
        labels = torch.randint(0, 10, (batch_size,), device=DEVICE)
        pair = []
        for model, opt in ((net, optimizer), (ref, ref_optimizer)):
            opt.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            opt.step()
            pair.append(loss.detach())
        check_same(f"step {i} loss", *pair)
        losses.append(pair)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        check_same(f"trained {name}", p, q)
    return losses


def main():
    neural_networks_tutorial()
    cifar_training_loop()
    print("\nEvery step matches the tutorial's Net.")


if __name__ == "__main__":
    main()
