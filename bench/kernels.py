"""The kernel report: each kernel configuration's resources on an H100, its occupancy, and its floor.

    python -m bench kernels [--from REHEARSAL_JSON]     (make kernels)

writes bench/results/kernels-sm90.md and .json from bench/rehearsal.py's full grid: every launch of
the public API, compiled for sm_90 on this CPU. For each kernel and configuration the launchers use
it gives registers, spill bytes, shared memory, warps and stages; blocks per SM and the resource that
limits them; the grid and waves on 132 SMs at batches 1, 256, 4096 and 65,536; and FLOPs and bytes per
launch with the lower-bound time they imply at the H100's arithmetic rate and HBM bandwidth. Where a
GPU run measured the same launches (`make gpu-check` writes bench/results/<device>-kernels.json),
the measured time stands beside the bound.

This module also holds the limits that the fused kernels must meet (violations()), which the
rehearsal tests check.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lenet_triton.files import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = RESULTS / "kernels-sm90"
REPORT_BATCHES = (1, 256, 4096, 65536)


@dataclass(frozen=True)
class Hopper:
    """An H100 SXM's limits (CUDA's occupancy tables for compute capability 9.0) and peak rates."""
    name: str = "H100 SXM"
    capability: int = 90
    sms: int = 132
    warp_size: int = 32
    shared_per_block: int = 227 * 1024         # the most one block may ask for
    shared_per_sm: int = 228 * 1024
    shared_reserved_per_block: int = 1024      # the system's share of each resident block
    registers_per_sm: int = 64 * 1024
    register_unit: int = 256                   # a warp's registers come in units of this many
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    # Dense peak rates (FLOP/s) by how the arithmetic runs, and HBM3 bandwidth (bytes/s).
    fp32_flops: float = 67e12                  # CUDA cores (FMA): fp32 with TF32 off
    tf32_flops: float = 494.7e12               # tensor cores
    half_flops: float = 989.4e12               # fp16 and bf16 tensor cores
    fp64_flops: float = 67e12                  # fp64 tensor cores
    hbm_bytes: float = 3.35e12


H100 = Hopper()

# What the fused kernels must meet on the H100 at every plan, in these precisions.
FITTED_PRECISIONS = ("fp32", "fp16", "bf16")
FUSED_SHARED_LIMIT = 113 * 1024      # two blocks per SM
FUSED_MIN_RESIDENT_WARPS = 8
FUSED_MIN_PROGRAMS = H100.sms        # in flight, at batch >= 256
FUSED_MIN_PROGRAMS_BATCH = 256


# ------------------------------------------------------------------------------------------------
# Occupancy
# ------------------------------------------------------------------------------------------------

def registers_per_warp(registers: int) -> int:
    unit = H100.register_unit
    return -(-max(registers, 1) * H100.warp_size // unit) * unit


def max_threads_per_block(registers: int) -> int:
    """The largest block a kernel can launch with (what the driver reports): the register file's
    limit, at most 1024 threads."""
    return min(1024, H100.registers_per_sm // registers_per_warp(registers) * H100.warp_size)


def blocks_per_sm(registers: int, num_warps: int, shared: int) -> tuple[int, str]:
    """(resident blocks per SM, the resource that limits them) for a kernel on the H100."""
    limits = {
        "registers": H100.registers_per_sm // (registers_per_warp(registers) * num_warps),
        "shared memory": H100.shared_per_sm // (shared + H100.shared_reserved_per_block),
        "threads": H100.threads_per_sm // (num_warps * H100.warp_size),
        "blocks": H100.blocks_per_sm,
    }
    limiter = min(limits, key=limits.get)
    return limits[limiter], limiter


# ------------------------------------------------------------------------------------------------
# FLOPs and bytes per launch: what the launch must compute and move at least
# ------------------------------------------------------------------------------------------------

def lenet_forward_flops(in_channels: int, num_classes: int) -> int:
    """Per sample: conv1 and conv2 (6 x 28x28 and 16 x 10x10 outputs) and the three fc layers."""
    return 2 * (6 * 784 * 25 * in_channels + 16 * 100 * 150 + 400 * 120 + 120 * 84 + 84 * num_classes)


def lenet_backward_flops(in_channels: int, num_classes: int) -> int:
    """Per sample: every weight gradient (as many FLOPs as the forward) and every input gradient but
    the images'. With the forward, 2.26 MFLOP per sample for the tutorial's LeNet."""
    return lenet_forward_flops(in_channels, num_classes) + 2 * (16 * 100 * 150 + 400 * 120 + 120 * 84
                                                                + 84 * num_classes)


def _size(t) -> int:
    """Bytes of a described tensor (bench/rehearsal.py's _describe), or of a tuple of them."""
    if isinstance(t, list):
        return sum(_size(item) for item in t)
    return math.prod(t["shape"]) * t["itemsize"]


def _conv_flops(a, groups):
    return 2 * a["N"] * a["OH"] * a["OW"] * a["C_OUT_G"] * groups * a["C_IN_G"] * a["KH"] * a["KW"]


def launch_cost(record) -> tuple[int, int]:
    """(FLOPs, bytes) that a launch must at least compute and move through HBM. Scratch that a
    program writes and reads back itself stays in L2 and is not counted."""
    name, a, c, grid = record["kernel"], record["args"], record["constexprs"], record["grid"]
    if name == "conv2d_forward_kernel":
        return _conv_flops(a, grid[2]), sum(_size(a[t]) for t in ("x_ptr", "w_ptr", "y_ptr")) \
            + (_size(a["b_ptr"]) if c["HAS_BIAS"] else 0)
    if name == "relu_grad_kernel":
        return a["PLANES"] * a["POSITIONS"], sum(_size(a[t]) for t in ("g_ptr", "y_ptr", "out_ptr"))
    if name == "conv2d_grad_input_kernel":
        return _conv_flops(a, grid[2]), sum(_size(a[t]) for t in ("g_ptr", "w_ptr", "dx_ptr"))
    if name == "conv2d_grad_weight_kernel":
        return _conv_flops(a, grid[2]), sum(_size(a[t]) for t in ("g_ptr", "x_ptr", "dw_ptr")) \
            + (_size(a["y_ptr"]) if c["GATE_RELU"] else 0) + (_size(a["db_ptr"]) if c["HAS_BIAS"] else 0)
    if name == "linear_kernel":
        m, n, k = a["M"], a["N"], a["K"]
        item = a["a_ptr"]["itemsize"]
        return 2 * m * n * k, item * (m * k * (2 if c["GATE_RELU"] else 1) + k * n) + _size(a["c_ptr"]) \
            + (n * item if c["HAS_BIAS"] else 0) + (_size(a["rowsum_ptr"]) if c["ROWSUM"] else 0)
    if name == "max_pool2d_forward_kernel":
        outputs = a["PLANES"] * a["OH"] * a["OW"]
        return outputs * a["KH"] * a["KW"], _size(a["x_ptr"]) + _size(a["y_ptr"]) + _size(a["idx_ptr"])
    if name == "max_pool2d_backward_kernel":
        return a["PLANES"] * a["OH"] * a["OW"], sum(_size(a[t]) for t in ("g_ptr", "idx_ptr", "dx_ptr"))
    if name == "sum_partials_kernel":
        return (a["SPLITS"] - 1) * a["NUMEL"], _size(a["partial_ptr"]) + a["NUMEL"] * a["out_ptr"]["itemsize"]
    if name in ("lenet_forward_kernel", "lenet_backward_kernel", "lenet_train_kernel"):
        batch, in_channels, classes = a["batch"], c["C_IN"], c["NC"]
        x_bytes = batch * a["x_ptr"]["itemsize"] * in_channels * 1024
        params = _size(a["parameters"])
        if name == "lenet_forward_kernel":
            return batch * lenet_forward_flops(in_channels, classes), \
                x_bytes + params + sum(_size(a[t]) for t in ("logits_ptr", "act_ptr", "win_ptr"))
        partials = _size(a["partial_ptr"])
        if name == "lenet_backward_kernel":
            return batch * lenet_backward_flops(in_channels, classes), \
                x_bytes + params + partials + sum(_size(a[t]) for t in ("dlogits_ptr", "act_ptr", "win_ptr"))
        return batch * (lenet_forward_flops(in_channels, classes) + lenet_backward_flops(in_channels, classes)), \
            x_bytes + params + partials + batch * 8 + _size(a["loss_partial_ptr"])
    if name == "lenet_reduce_kernel":
        partial_rows = a["programs"] * c["TOTAL"] * a["partial_ptr"]["itemsize"]
        params = _size(a["parameters"])
        moved = {"none": params,                                           # the gradients written
                 "sgd": 2 * params + 2 * _size(a["state1"]) * any(c["MOMENTUM"]),
                 "adam": 2 * params + 2 * _size(a["state1"]) + 2 * _size(a["state2"])}[c["UPDATE"]]
        return a["programs"] * c["TOTAL"], partial_rows + moved
    raise ValueError(f"bench.kernels: no cost model for {name}; add one to launch_cost")


def peak_flops(record) -> tuple[float, str]:
    """The H100's rate for a launch's arithmetic, and its name."""
    c = record["constexprs"]
    if c.get("ACC") == "fp64":
        return H100.fp64_flops, "fp64"
    if c.get("DOT_PRECISION") == "tf32":
        return H100.tf32_flops, "tf32"
    if record["precision"] in ("fp16", "bf16") and "DOT_PRECISION" in c:
        return H100.half_flops, "fp16/bf16 tensor cores"
    return H100.fp32_flops, "fp32"


def lower_bound_us(flops: int, moved: int, rate: float) -> float:
    return 1e6 * max(flops / rate, moved / H100.hbm_bytes)


# ------------------------------------------------------------------------------------------------
# Rows and limits
# ------------------------------------------------------------------------------------------------

def call_label(record) -> str:
    """What a launch computes, in a few words: the GEMM or window shape and its flags."""
    name, a, c = record["kernel"], record["args"], record["constexprs"]
    flags = [k for k, v in c.items() if v is True]
    if name.startswith("conv2d"):
        groups = record["grid"][2]
        what = f"{a['C_IN_G'] * groups}->{a['C_OUT_G'] * groups} {a['KH']}x{a['KW']} on {a['H']}x{a['W']}" \
            + (f" /{a['SH']}" if a["SH"] > 1 else "") + (f" g{groups}" if groups > 1 else "")
    elif name == "linear_kernel":
        what = f"{a['M']}x{a['K']} @ {a['K']}x{a['N']}" + (f" split {record['grid'][2]}" if record["grid"][2] > 1
                                                           else "")
    elif name.startswith("max_pool2d"):
        what = f"{a['KH']}x{a['KW']} /{a['SH']} on {a['H']}x{a['W']}"
    elif name == "sum_partials_kernel":
        what = f"{a['SPLITS']} x {a['NUMEL']}"
    elif name == "lenet_reduce_kernel":
        momentum = {0: "", 1: " momentum", 2: " momentum start"}[max(c["MOMENTUM"])]
        return f"{c['UPDATE']}{momentum}" + (" + loss" if c["HAS_LOSS"] else "")
    elif name.startswith("lenet_"):
        return f"{c['SAMPLES']} samples/tile" + (" + Adam steps" if c.get("INCREMENT_STEPS") else "")
    else:
        what = ""
    index = " int64" if c.get("IDX") == "int64" else ""
    return " ".join(filter(None, [what + index, *flags]))


def row(record) -> dict:
    """A launch as a report row: occupancy, waves, cost and bound added."""
    blocks, limiter = blocks_per_sm(record["registers"], record["num_warps"], record["shared"])
    programs = math.prod(record["grid"])
    flops, moved = launch_cost(record)
    rate, rate_name = peak_flops(record)
    return {key: record.get(key) for key in ("group", "scenario", "kernel", "precision", "in_channels", "batch",
                                             "grid", "registers", "spill", "shared", "num_warps", "num_stages",
                                             "measured_us")} | {
        "call": call_label(record), "blocks_per_sm": blocks, "limited_by": limiter,
        "resident_warps": blocks * record["num_warps"], "programs": programs,
        "in_flight": min(programs, blocks * H100.sms), "waves": programs / (blocks * H100.sms),
        "flops": flops, "bytes": moved, "rate": rate_name, "bound_us": lower_bound_us(flops, moved, rate)}


def _key(r) -> tuple:
    return r["kernel"], r["call"], r["precision"], r["in_channels"], r["batch"]


def rows(result) -> list:
    """One row per distinct launch (kernel, call, precision, channels, batch): repeats dropped."""
    found = {}
    for record in result["launches"]:
        r = row(record)
        previous = found.get(_key(r))
        # Where a key repeats (a training step's second call), keep the worse compile.
        if previous is None or (r["spill"], r["registers"]) > (previous["spill"], previous["registers"]):
            found[_key(r)] = r
    return list(found.values())


def violations(result) -> list:
    """Every way the rehearsal falls short of issue 27's limits, as sentences (none: all met).

    Every scenario must bind and compile. The fused kernels (fp32 with TF32 off, fp16, bf16) must
    have no spills, at most 113 KB of shared memory, at least 8 warps resident per SM, and at batch
    >= 256 at least 132 programs in flight. The per-op kernels in LeNet's layers (the same
    precisions) must have no spills.
    """
    found = [f"{f['scenario']}: {f['error']}" for f in result["failures"]]
    for r in rows(result):
        if r["precision"] not in FITTED_PRECISIONS or r["group"] == "ops":
            continue
        where = f"{r['kernel']} ({r['call']}) in {r['scenario']}"
        if r["spill"]:
            found.append(f"{where}: spills {r['spill']} bytes per thread ({r['registers']} registers)")
        if r["group"] == "lenet-triton":
            continue
        if r["shared"] > FUSED_SHARED_LIMIT:
            found.append(f"{where}: {r['shared']} bytes of shared memory, more than {FUSED_SHARED_LIMIT}")
        if r["resident_warps"] < FUSED_MIN_RESIDENT_WARPS:
            found.append(f"{where}: {r['resident_warps']} warps resident per SM ({r['blocks_per_sm']} blocks, limited "
                         f"by {r['limited_by']}), fewer than {FUSED_MIN_RESIDENT_WARPS}")
        if r["batch"] >= FUSED_MIN_PROGRAMS_BATCH and r["in_flight"] < FUSED_MIN_PROGRAMS:
            found.append(f"{where}: {r['in_flight']} programs in flight, fewer than {FUSED_MIN_PROGRAMS}")
    return found


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

FUSED_GROUPS = ("lenet-fused", "train-step", "distributed-step")


def limits_table(failures, all_rows) -> list:
    """(check, required, found, met) for each of issue 27's limits."""
    fitted = [r for r in all_rows if r["precision"] in FITTED_PRECISIONS]
    fused = [r for r in fitted if r["group"] in FUSED_GROUPS]
    per_op = [r for r in fitted if r["group"] == "lenet-triton"]
    busy = [r for r in fused if r["batch"] >= FUSED_MIN_PROGRAMS_BATCH]
    failures = len(failures)
    checks = [("every launch binds and compiles (all precisions)", "0 failures", f"{failures} failures",
               failures == 0)]
    if fused:
        spill, shared = max(r["spill"] for r in fused), max(r["shared"] for r in fused)
        warps = min(r["resident_warps"] for r in fused)
        checks += [("fused: spill bytes", "0", str(spill), spill == 0),
                   ("fused: shared memory per block", f"<= {FUSED_SHARED_LIMIT // 1024} KB",
                    f"{shared / 1024:.1f} KB", shared <= FUSED_SHARED_LIMIT),
                   ("fused: warps resident per SM", f">= {FUSED_MIN_RESIDENT_WARPS}", str(warps),
                    warps >= FUSED_MIN_RESIDENT_WARPS)]
    if busy:
        flight = min(r["in_flight"] for r in busy)
        checks.append((f"fused: programs in flight at batch >= {FUSED_MIN_PROGRAMS_BATCH}",
                       f">= {FUSED_MIN_PROGRAMS}", str(flight), flight >= FUSED_MIN_PROGRAMS))
    if per_op:
        spill = max(r["spill"] for r in per_op)
        checks.append(("per-op kernels in LeNet's layers: spill bytes", "0", str(spill), spill == 0))
    return checks


def _table(headers, body) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in body]
    return "\n".join(lines)


def _worst(group_rows) -> list:
    """Registers, spill, shared, warps, stages, blocks/SM (limiter): the worst over a set of rows."""
    tightest = min(group_rows, key=lambda r: (r["resident_warps"], -r["registers"]))
    return [max(r["registers"] for r in group_rows), max(r["spill"] for r in group_rows),
            f"{max(r['shared'] for r in group_rows) / 1024:.1f}",
            "/".join(sorted({str(r["num_warps"]) for r in group_rows})),
            "/".join(sorted({str(r["num_stages"]) for r in group_rows})),
            f"{tightest['blocks_per_sm']} ({tightest['limited_by']})"]


RESOURCE_HEADERS = ["registers", "spill B", "shared KB", "warps", "stages", "blocks/SM (limit)"]


def _resources(all_rows, keys, label) -> str:
    groups = {}
    for r in all_rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    body = [[*key, *_worst(members)] for key, members in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    return _table([*label, *RESOURCE_HEADERS], body)


def _launches(all_rows) -> str:
    def measured(r):
        return f"{r['measured_us']:.1f}" if r.get("measured_us") is not None else "-"
    body = [[r["kernel"], r["call"], r["precision"], r["in_channels"], r["batch"], r["programs"],
             f"{r['waves']:.2f}", r["registers"], r["spill"], f"{r['shared'] / 1024:.1f}",
             f"{r['blocks_per_sm']} ({r['limited_by']})", f"{r['flops'] / 1e6:.2f}", f"{r['bytes'] / 1e6:.3f}",
             f"{r['bound_us']:.2f}", measured(r)]
            for r in sorted(all_rows, key=lambda r: (r["precision"], r["in_channels"], r["batch"], r["kernel"],
                                                     r["call"]))]
    return _table(["kernel", "call", "precision", "C", "batch", "programs", "waves", "registers", "spill B",
                   "shared KB", "blocks/SM (limit)", "MFLOP", "MB", "bound us", "measured us"], body)


def _details(summary, text) -> str:
    return f"<details><summary>{summary}</summary>\n\n{text}\n\n</details>"


def markdown(report) -> str:
    all_rows = report["rows"]
    in_batches = [r for r in all_rows if r["batch"] in REPORT_BATCHES]
    fused = [r for r in in_batches if r["group"] in FUSED_GROUPS]
    per_op = [r for r in in_batches if r["group"] == "lenet-triton"]
    others = [r for r in all_rows if r["group"] == "ops"]
    headline = [r for r in fused if r["precision"] == "fp32"]
    per_op_headline = [r for r in per_op if r["precision"] == "fp32" and r["in_channels"] == 1 and r["batch"] == 4096]
    measured_on = report["measured_on"]
    parts = [
        "# Kernels on an H100 (sm_90): resources, occupancy and floors",
        "",
        f"Written by `python -m bench kernels` (`make kernels`) on {report['written']} from the launch rehearsal "
        f"(bench/rehearsal.py): every launch of the public API, bound and compiled for sm_90 by triton "
        f"{report['triton']} (torch {report['torch']}) on a CPU, stopping only at the launch itself. "
        f"{report['scenarios']} scenarios, {report['launches']} launches, {len(all_rows)} distinct ones below. "
        "Registers and spills are ptxas's, read from each cubin; shared memory is triton's own figure.",
        "",
        f"Occupancy is worked out for an {H100.name}: {H100.sms} SMs, 64K registers, "
        f"{H100.shared_per_sm // 1024} KB of shared memory and {H100.threads_per_sm} threads per SM. Waves = "
        f"programs / (blocks per SM x {H100.sms}). The bound is the larger of FLOPs over the peak rate "
        f"(fp32 on CUDA cores {H100.fp32_flops / 1e12:.0f} TFLOP/s, TF32 {H100.tf32_flops / 1e12:.0f}, "
        f"fp16/bf16 {H100.half_flops / 1e12:.0f}, fp64 {H100.fp64_flops / 1e12:.0f}) and bytes over HBM's "
        f"{H100.hbm_bytes / 1e12:.2f} TB/s; bytes count what a launch must read and write at least (a "
        "program's own scratch stays in L2 and is left out).",
        "",
        "Measured times: " + (f"from {measured_on}." if measured_on else
                              "none yet; `make gpu-check` times these launches on a GPU, and `python -m bench "
                              "kernels --update` then puts them beside the bound."),
        "",
        "## Limits",
        "",
        _table(["check", "required", "found", "met"],
               [[limit["check"], limit["required"], limit["found"], "yes" if limit["met"] else "**NO**"]
                for limit in report["limits"]]),
        "",
        "## Fused kernels (kernels/lenet.py)",
        "",
        "Worst case over batch sizes and optimizer modes:",
        "",
        _resources([r for r in all_rows if r["group"] in FUSED_GROUPS], ("kernel", "precision", "in_channels"),
                   ["kernel", "precision", "C"]),
        "",
        "Launches in fp32 (TF32 off):",
        "",
        _launches(headline),
        "",
        _details("Launches in every precision", _launches(fused)),
        "",
        "## Per-op kernels in LeNet's layers (backend=\"triton\")",
        "",
        "Worst case over the layers and batch sizes:",
        "",
        _resources([r for r in all_rows if r["group"] == "lenet-triton"], ("kernel", "precision"),
                   ["kernel", "precision"]),
        "",
        "One training step's launches, fp32, batch 4096, 1 channel:",
        "",
        _launches(per_op_headline),
        "",
        _details("Launches in fp32, fp16 and bf16, both channel counts, batches 1, 256, 4096 and 65,536 "
                 "(TF32 and fp64 in kernels-sm90.json)",
                 _launches([r for r in per_op if r["precision"] in FITTED_PRECISIONS])),
        "",
        "## Per-op kernels in other configurations",
        "",
        "Calls that LeNet does not make (strides, padding, groups, dilation, 64-bit offsets), each op "
        "forward and backward:",
        "",
        _resources(others, ("kernel", "call", "precision"), ["kernel", "call", "precision"]),
        "",
    ]
    return "\n".join(parts)


def build(result) -> dict:
    """The report's content from a rehearsal's JSON (bench/rehearsal.py)."""
    all_rows = rows(result)
    return {"written": datetime.date.today().isoformat(), "triton": result["triton"], "torch": result["torch"],
            "device_model": H100.__dict__, "scenarios": len(result["scenarios"]),
            "launches": len(result["launches"]), "failures": result["failures"],
            "limits": [dict(zip(("check", "required", "found", "met"), check))
                       for check in limits_table(result["failures"], all_rows)],
            "measured_on": None, "rows": all_rows}


def merge_measured(report, results=RESULTS) -> None:
    """Puts the times that a GPU run measured (gpu-check's <device>-kernels.json, the newest) beside
    the rows of the same launches."""
    found = sorted(results.glob("*-kernels.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        return
    measured = json.loads(found[-1].read_text())
    times = {}
    for record in measured["launches"]:
        if record.get("measured_us") is not None:
            times.setdefault(_key(row(record)), []).append(record["measured_us"])
    for r in report["rows"]:
        if _key(r) in times:
            r["measured_us"] = sorted(times[_key(r)])[len(times[_key(r)]) // 2]
    report["measured_on"] = (f"{measured['device']} (triton {measured['triton']}, torch {measured['torch']}; "
                             f"bench/results/{found[-1].name})")


def write(report, path=REPORT) -> None:
    write_json(path.with_suffix(".json"), report)
    write_text(path.with_suffix(".md"), markdown(report))


def run_rehearsal(folder: Path, processes: int) -> dict:
    """The full grid, in `processes` rehearsal processes side by side (each needs the kernels defined
    for the compiler, so none runs in this one); their results merged."""
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    paths = [folder / f"rehearsal-{i}.json" for i in range(processes)]
    running = [subprocess.Popen(rehearsal_command(folder / "queue", path, full=True), cwd=ROOT, env=env)
               for path in paths]
    for process in running:
        process.wait()
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise RuntimeError(f"the rehearsal wrote nothing to {', '.join(missing)} (see above)")
    return merge_parts([json.loads(path.read_text()) for path in paths])


def rehearsal_command(queue: Path, json_path: Path, full: bool = False) -> list:
    """One of several rehearsal processes that share the scenarios through `queue`, each writing its
    part to its own json_path (run with TRITON_INTERPRET=0 and the repository on PYTHONPATH)."""
    return [sys.executable, "-m", "bench.rehearsal", *(["--full"] if full else []), "--queue", str(queue),
            "--json", str(json_path)]


def merge_parts(parts: list) -> dict:
    """One rehearsal result from the parts that rehearsal_command's processes wrote."""
    merged = dict(parts[0], scenarios=[], seconds={}, launches=[], failures=[])
    for part in parts:
        for key in ("scenarios", "launches", "failures"):
            merged[key] += part[key]
        merged["seconds"].update(part["seconds"])
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="rehearsal", type=Path,
                        help="a rehearsal's JSON (python -m bench.rehearsal --full --json FILE) instead of running it")
    source.add_argument("--update", action="store_true",
                        help="only merge the newest GPU measurements into the existing report")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="rehearsal processes side by side (default: one per core)")
    args = parser.parse_args(argv)
    if args.update:
        if not REPORT.with_suffix(".json").exists():
            parser.error(f"{REPORT.with_suffix('.json')} does not exist; run python -m bench kernels first")
        report = json.loads(REPORT.with_suffix(".json").read_text())
    elif args.rehearsal:
        report = build(json.loads(args.rehearsal.read_text()))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = build(run_rehearsal(Path(tmp), args.processes))
    merge_measured(report)
    write(report)
    print(f"wrote {REPORT.with_suffix('.md').relative_to(ROOT)} and .json")
    short = [limit for limit in report["limits"] if not limit["met"]]
    for limit in short:
        print(f"  short of the limits: {limit['check']}: {limit['found']} (required {limit['required']})")
    return 1 if short else 0
