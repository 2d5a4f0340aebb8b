"""The package's layout: no two modules import each other, directly or around a loop. Imports inside
functions count too, since a late import is how a circle hides."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lenet_triton"
pytestmark = pytest.mark.torch_only


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict) -> set:
    """The package's modules that `name` imports (a `from package import name` of a submodule counts
    as an import of the submodule)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in known:
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found - {name}


def import_graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(graph: dict) -> list:
    """Every strongly connected group of two or more modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_another_that_imports_it_back():
    graph = import_graph()
    assert "lenet_triton.ops.conv" in graph and "lenet_triton.datasets.cifar10" in graph
    found = circles(graph)
    assert not found, "modules that import each other: " + "; ".join(" <-> ".join(group) for group in found)


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_layers_only_import_downwards():
    """kernels <- ops <- nn <- model <- (step, train): no kernel module imports an op, no op the model."""
    graph = import_graph()
    layers = ["lenet_triton.kernels", "lenet_triton.ops", "lenet_triton.nn", "lenet_triton.model"]
    for lower, upper in zip(layers, layers[1:]):
        for name, imported in graph.items():
            if name.startswith(lower):
                above = [target for target in imported if any(target.startswith(layer) for layer in layers[
                    layers.index(upper):])]
                assert not above, f"{name} imports {above}, a layer above it"


def test_the_former_module_names_still_import_the_same_objects():
    """lenet_triton.data and lenet_triton.cifar10 became lenet_triton.datasets; old imports still work."""
    from lenet_triton import cifar10, data, datasets
    from lenet_triton.datasets import cifar10 as moved

    assert all(getattr(data, name) is getattr(datasets, name) for name in datasets.__all__)
    assert all(getattr(cifar10, name) is getattr(moved, name) for name in cifar10.__all__)
    assert data.load is datasets.load and cifar10.load_cifar10 is moved.load_cifar10
