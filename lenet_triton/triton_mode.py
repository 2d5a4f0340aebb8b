"""Chooses how the kernels run: compiled for CUDA, or on CPU tensors through Triton's interpreter.

`triton.jit` picks interpreter or compiler once, when a function is decorated, from
TRITON_INTERPRET. Our kernels are decorated after `select()` has set that switch, so they follow it.
Triton's own @jit helpers (tl.zeros, tl.sum, tl.max, tl.cdiv, the tl.tensor methods, tl.rand, ...)
are decorated when triton is first imported. If something imported triton before us (a plain
`import triton`, `torch._inductor`, an earlier `torch.compile`), those helpers were built for the
compiler, and an interpreted kernel that calls one fails with "Cannot call @triton.jit'd outside of
the scope of a kernel". Upstream's answer is to set the variable before importing triton; there is
no public switch.

So on a machine without CUDA, where the interpreter is the only way to run at all, `select()`
rebuilds each of those helpers once as the interpreted function an interpreter-first import would
have made, rebinds every name that held it, and checks the result. One new object per helper,
because the interpreter's fast reductions recognise `tl.standard._sum_combine` and friends by
identity. Anywhere else a mismatch between the helpers and the switch is refused here, at import,
rather than deep inside a kernel.
"""

import os
import sys

import torch

_REBUILT = False


def select() -> None:
    """Sets TRITON_INTERPRET=1 when there is no CUDA device and the user chose nothing, then makes
    triton's own helpers agree with the switch, or raises ImportError saying why they cannot."""
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    # Imported only now, so that a first import of triton already sees the switch.
    import triton
    from triton.runtime.jit import JITFunction

    if triton.knobs.runtime.interpret:
        compiled = _triton_helpers(JITFunction)
        if not compiled:
            return
        if torch.cuda.is_available():
            raise ImportError(_late_switch_message(triton.__version__))
        _rebuild_as_interpreted(compiled)
        _check_rebuilt(triton.__version__)
    else:
        interpreter = sys.modules.get("triton.runtime.interpreter")
        if interpreter is not None and _triton_helpers(interpreter.InterpretedFunction):
            raise ImportError(
                "lenet_triton: TRITON_INTERPRET is off now, but triton was first imported while it was "
                "on, so triton's own helpers (tl.zeros, tl.sum, ...) are interpreter functions and no "
                "kernel can compile. Keep TRITON_INTERPRET the same from before the first import of "
                "triton (set it in the shell, not in the script).")


def rebuilt_triton_helpers() -> bool:
    """True when select() had to rebuild triton's helpers for the interpreter in this process."""
    return _REBUILT


def _triton_helpers(kind) -> list:
    """Every object of type `kind` (exactly) in triton.language, its loaded submodules and the
    tl.tensor methods, once each."""
    namespaces = [vars(module) for name, module in list(sys.modules.items())
                  if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
    namespaces.append(vars(sys.modules["triton.language"].tensor))
    found = {id(value): value for namespace in namespaces for value in namespace.values() if type(value) is kind}
    return list(found.values())


def _rebuild_as_interpreted(helpers) -> None:
    """Makes one interpreted function per compiled helper and points every module-level name and
    tl.tensor method that held the old one at it. (A JITFunction cannot become an
    InterpretedFunction in place: Python refuses the __class__ change between their layouts.)"""
    global _REBUILT
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    replacement = {id(helper): InterpretedFunction(helper.fn) for helper in helpers}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if namespace is None:
            continue
        for name, value in list(namespace.items()):
            if id(value) in replacement:
                namespace[name] = replacement[id(value)]
    for helper in helpers:
        if vars(tl.tensor).get(helper.fn.__name__) is helper:
            # A compiled helper is attached to tl.tensor as is (it binds like a method); an
            # interpreted one needs the wrapper that triton's own decorator makes for it.
            tl.core._tensor_member_fn(replacement[id(helper)])
    _REBUILT = True


def _check_rebuilt(version: str) -> None:
    """The rebuild leans on triton internals that a future release may change: prove it worked."""
    from triton.runtime.jit import JITFunction

    from .kernels.probe import probe_helpers

    left = _triton_helpers(JITFunction)
    problem = f"{len(left)} helpers are still compiler functions, e.g. {left[0]!r}" if left else None
    if problem is None:
        try:
            problem = probe_helpers()
        except Exception as error:  # what a failed rebuild raises is up to triton
            problem = f"a probe kernel failed: {error!r}"
    if problem is not None:
        raise ImportError(
            f"lenet_triton: triton {version} was imported before TRITON_INTERPRET=1 was set, and "
            f"rebuilding its helpers for the interpreter did not work ({problem}). Import lenet_triton "
            "before triton, torch._inductor or any torch.compile call, or start Python with "
            "TRITON_INTERPRET=1 set in the environment.")


def _late_switch_message(version: str) -> str:
    return (
        f"lenet_triton: TRITON_INTERPRET=1 is set, but triton {version} was imported before it was "
        "(directly, by torch._inductor or by an earlier torch.compile), so triton's own helpers "
        "(tl.zeros, tl.sum, ...) were built for the compiler and every interpreted kernel would fail. "
        "A CUDA device is present, so lenet_triton leaves triton as it is. Set TRITON_INTERPRET=1 "
        "before anything imports triton (in the shell: TRITON_INTERPRET=1 python ...), or unset it "
        "to run the kernels compiled on the GPU.")
