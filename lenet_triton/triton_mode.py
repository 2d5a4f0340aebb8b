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

import dataclasses
import os
import sys
import types

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
        if compiled:
            if torch.cuda.is_available():
                raise ImportError(_late_switch_message(triton.__version__))
            _rebuild_as_interpreted(compiled)
            _check_rebuilt(triton.__version__)
        _adjust_interpreter(triton.__version__)
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


# ------------------------------------------------------------------------------------------------
# Two narrow adjustments of the interpreter's own overhead (bench/NOTES.md has what each saves)
# ------------------------------------------------------------------------------------------------
#
# "patch-once": a launch patches triton.language for the interpreter (an inspect.getmembers scan of
#   several hundred names), and so does every call of a nested @triton.jit function, without ever
#   undoing it. Patching both language modules (tl and tl.core, all that the interpreter ever
#   patches) at the launch makes the nested calls' patches no-ops, so they are skipped.
# "no-overflow-checks": with sanitize_overflow on, every int32 + - * also computes an overflow check
#   in int64 and hands it to device_assert, which drops it unless debug is on (it never is in the
#   interpreter). The check is not computed.
# Neither changes a value a kernel computes (tests/test_interpreter.py compares every path with and
# without them, bit for bit). They rely on the interpreter's internals, so they are made only on the
# triton versions they were checked on and proven by a probe kernel at import; the environment
# variable turns them off ("none"), or keeps a subset ("patch-once" or "no-overflow-checks").

ADJUSTMENTS_VARIABLE = "LENET_TRITON_INTERPRETER_ADJUSTMENTS"
ADJUSTMENTS = ("patch-once", "no-overflow-checks")
CHECKED_TRITON_VERSIONS = ("3.6.", "3.9.")

_adjusted: tuple = ()


def interpreter_adjustments() -> tuple:
    """The adjustments in effect in this process (a subset of ADJUSTMENTS)."""
    return _adjusted


def _wanted_adjustments() -> tuple:
    value = os.environ.get(ADJUSTMENTS_VARIABLE, "all").strip()
    if value == "all":
        return ADJUSTMENTS
    if value in ("", "none"):
        return ()
    wanted = tuple(name.strip() for name in value.split(","))
    unknown = [name for name in wanted if name not in ADJUSTMENTS]
    if unknown:
        raise ImportError(f"lenet_triton: {ADJUSTMENTS_VARIABLE}={value!r} names {unknown}; use 'all' (the "
                          f"default), 'none', or a comma-separated subset of {list(ADJUSTMENTS)}")
    return wanted


def _adjust_interpreter(version: str) -> None:
    wanted = _wanted_adjustments()
    if not wanted or not version.startswith(CHECKED_TRITON_VERSIONS):
        return
    set_interpreter_adjustments(wanted)
    from .kernels.probe import probe_adjustments

    try:
        problem = probe_adjustments(interpreter_adjustments())
    except Exception as error:  # what a broken adjustment raises is up to triton
        problem = f"the probe kernel failed: {error!r}"
    if problem is not None:
        set_interpreter_adjustments(())
        raise ImportError(
            f"lenet_triton: the interpreter adjustments {list(wanted)} do not work on triton {version} "
            f"({problem}). Set {ADJUSTMENTS_VARIABLE}=none to run triton's interpreter as it is.")


def set_interpreter_adjustments(names) -> None:
    """Makes exactly `names` (a subset of ADJUSTMENTS) take effect; () restores the interpreter."""
    global _adjusted
    from triton.runtime import interpreter

    names = tuple(names)
    unknown = [name for name in names if name not in ADJUSTMENTS]
    if unknown:
        raise ValueError(f"unknown interpreter adjustments {unknown}; expected a subset of {list(ADJUSTMENTS)}")
    if not hasattr(interpreter, "_stock_patch_lang"):
        interpreter._stock_patch_lang = interpreter._patch_lang
        interpreter._stock_options = interpreter.interpreter_builder.options
    stock_options = interpreter._stock_options
    interpreter._patch_lang = _patch_lang_once if "patch-once" in names else interpreter._stock_patch_lang
    interpreter.interpreter_builder.options = (
        dataclasses.replace(stock_options, sanitize_overflow=False)
        if "no-overflow-checks" in names and not stock_options.debug else stock_options)
    _adjusted = names


class _LaunchPatch:
    """The language patches of the launch in flight: {language module: scope}, undone together when
    GridExecutor restores the launch's scope at its end."""
    scopes = None


def _patch_lang_once(fn):
    """The interpreter's _patch_lang, made at most once per language module and launch: a nested call
    patches only a module that no call of this launch has patched yet (a triton helper's tl.core, say)."""
    from triton.runtime import interpreter

    import triton.language as tl

    wanted = [value for value in fn.__globals__.values() if isinstance(value, types.ModuleType) and value in (tl, tl.core)]
    if _LaunchPatch.scopes is None:
        scope = interpreter._stock_patch_lang(fn)
        _LaunchPatch.scopes = dict.fromkeys(wanted, scope)
        stock_restore = scope.restore

        def restore():
            nested = [patch for patch in _LaunchPatch.scopes.values() if patch is not scope]
            _LaunchPatch.scopes = None
            for patch in reversed(nested):
                patch.restore()
            stock_restore()

        scope.restore = restore
        return scope
    missing = [lang for lang in wanted if lang not in _LaunchPatch.scopes]
    if missing:
        patch = interpreter._stock_patch_lang(_function_seeing(*missing))
        _LaunchPatch.scopes.update(dict.fromkeys(missing, patch))
    return None  # a nested call ignores what _patch_lang returns


def _function_seeing(*modules):
    """A function whose globals hold exactly `modules`: the interpreter patches the language modules
    it finds in a function's globals."""
    return types.FunctionType((lambda: None).__code__, {f"module{i}": module for i, module in enumerate(modules)})
