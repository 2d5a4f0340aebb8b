"""Turns a pytest-benchmark JSON into bench/results/<device>.md (tables) and <device>.png (speedup plot).

Columns: median and IQR of the step time, samples/s, speedup against eager and against the best
torch.compile mode at the same batch ("263x slower" below 1), achieved GFLOP/s, and the ratio of
the median to the computed floor (FLOPs of the call over the device's measured float32 matmul
rate). Where Triton runs through its interpreter, a summary first gives each Triton row's time as a
multiple of eager's.
"""

import json
from collections import defaultdict
from pathlib import Path

from lenet_triton.files import atomic_path, write_text

from . import variants


def load_rows(json_path) -> list:
    data = json.loads(Path(json_path).read_text())
    rows = []
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        rows.append({**info, "median": stats["median"], "iqr": stats["iqr"], "rounds": stats["rounds"]})
    return rows


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _speedup(reference: float, median: float) -> str:
    """How much faster than `reference` a row is, readable at any size: "1.56x", or "263x slower"."""
    ratio = reference / median
    return f"{ratio:.2f}x" if ratio >= 1 else f"{1 / ratio:.3g}x slower"


def _section(rows, title, expected_variants, baseline) -> list:
    lines = [f"### {title}", "",
             f"| variant | median | IQR | samples/s | vs {baseline} | vs best compile | GFLOP/s | x floor | first call |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_variant = {r["variant"]: r for r in rows}
    eager = by_variant.get(baseline)
    compiled = [r["median"] for v, r in by_variant.items() if v.startswith("compile-")]
    best_compile = min(compiled) if compiled else None
    for variant in expected_variants:
        r = by_variant.get(variant)
        if r is None:
            lines.append(f"| {variant} | not timed: it failed its correctness check or errored (see the log) "
                         "| | | | | | | |")
            continue
        floor = r["flops_per_call"] / (r["peak_gflops"] * 1e9) if r["flops_per_call"] else None
        label = f"{variant} (interpreter)" if r.get("interpreter") else variant
        lines.append(" | ".join([
            f"| {label}", _fmt_time(r["median"]), _fmt_time(r["iqr"]), f"{r['batch'] / r['median']:,.0f}",
            _speedup(eager["median"], r["median"]) if eager else "-",
            _speedup(best_compile, r["median"]) if best_compile else "-",
            f"{r['flops_per_call'] / r['median'] / 1e9:.2f}" if r["flops_per_call"] else "-",
            f"{r['median'] / floor:,.0f}" if floor else "-",
            f"{r['first_call_seconds']:.2f} s |"]))
    return lines + [""]


def _host_section(rows, title, expected_variants, baseline) -> list:
    """Host-time rows: median with Triton launches stubbed out, launches per call, and the ratio to
    the yardstick (eager's whole real step) where there is one."""
    by_variant = {r["variant"]: r for r in rows}
    yardstick = by_variant.get(baseline) if baseline else None
    lines = [f"### {title}", "",
             "Triton launches replaced by no-ops: host work only (argument checks, dispatch, autograd, launch "
             "planning)" + (f"; `{baseline}` is a whole real step on the torch backend." if yardstick else "."), "",
             "| variant | median host time | IQR | Triton launches per call |"
             + (f" vs {baseline} |" if yardstick else ""),
             "| --- | ---: | ---: | ---: |" + (" ---: |" if yardstick else "")]
    for variant in expected_variants:
        r = by_variant.get(variant)
        if r is None:
            lines.append(f"| {variant} | not timed: it errored (see the log) | | |" + (" |" if yardstick else ""))
            continue
        ratio = f" {_speedup(yardstick['median'], r['median'])} |" if yardstick else ""
        lines.append(f"| {variant} | {_fmt_time(r['median'])} | {_fmt_time(r['iqr'])} | {r['launches']} |{ratio}")
    return lines + [""]


def _interpreter_summary(rows) -> list:
    """One line per training-step and inference table: eager's median, then each Triton row's median
    as a multiple of it."""
    tables = [g for g in dict.fromkeys(r["group"] for r in rows) if g.startswith(("train", "inference"))]
    triton = [v for v in dict.fromkeys([*variants.TRAIN_VARIANTS, *variants.INFERENCE_VARIANTS])
              if variants.runs_triton(v)]
    triton = [v for v in triton if any(r["variant"] == v and r["group"] in tables for r in rows)]
    lines = ["### Summary: each Triton row's time as a multiple of eager's", "",
             "| table | eager | " + " | ".join(triton) + " |", "| --- | ---: | " + " | ".join("---:" for _ in triton) + " |"]
    for group in tables:
        by_variant = {r["variant"]: r for r in rows if r["group"] == group}
        eager = by_variant.get(variants.BASELINE)
        if eager is None:
            continue
        cells = [f"{by_variant[v]['median'] / eager['median']:,.0f}x" if v in by_variant else "-" for v in triton]
        lines.append(f"| {group} | {_fmt_time(eager['median'])} | " + " | ".join(cells) + " |")
    return lines + [""]


# The README's headline table: (row label, benchmark group), and (column label, variants in order of
# preference: the first one timed fills the cell).
HEADLINE_ROWS = (("training step, batch 64", "train step, batch 64"), ("inference, batch 1", "inference, batch 1"),
                 ("inference, batch 64", "inference, batch 64"))
HEADLINE_COLUMNS = (("eager PyTorch", ("eager",)), ("torch.compile", ("compile-default",)),
                    ("onnxruntime", ("onnxruntime-cpu",)), ("Triton per-op", ("triton",)), ("Triton fused", ("fused",)),
                    ("TrainStep", ("fused-step",)))


def headline(rows) -> str:
    """The README's headline table from a run's rows: each cell the median, and beside a Triton or
    onnxruntime row its time against eager's ("118x slower", "7.07x")."""
    interpreter = any(r.get("interpreter") for r in rows)
    lines = ["| | " + " | ".join(label + (" (interpreter)" if interpreter and variants.runs_triton(wanted[0]) else "")
                                 for label, wanted in HEADLINE_COLUMNS) + " |",
             "| --- |" + " ---: |" * len(HEADLINE_COLUMNS)]
    for label, group in HEADLINE_ROWS:
        by_variant = {r["variant"]: r for r in rows if r["group"] == group}
        eager = by_variant.get(variants.BASELINE)
        cells = []
        for _, wanted in HEADLINE_COLUMNS:
            r = next((by_variant[v] for v in wanted if v in by_variant), None)
            if r is None:
                cells.append("-")
            elif r is eager or eager is None:
                cells.append(_fmt_time(r["median"]))
            else:
                cells.append(f"{_fmt_time(r['median'])} ({_speedup(eager['median'], r['median'])})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(rows) -> str:
    first = rows[0]
    lines = [f"# lenet_triton benchmark: {first['device']}", "",
             f"Precision: {first['precision']}. torch {first['torch']}, triton {first['triton']}, "
             f"onnxruntime {first['onnxruntime']}, lenet_triton {first['lenet_triton']}. "
             f"Measured float32 matmul peak: {first['peak_gflops']:.1f} GFLOP/s. Floor = FLOPs of the call / that "
             f"peak (a training step is {variants.lenet_flops(True) / 1e6:.2f} MFLOP per sample). Median and IQR "
             "over the timed rounds, after warm-up; `first call` includes compilation and is not in the median.", ""]
    if any(r.get("interpreter") for r in rows):
        lines += ["**Triton rows on this CPU run Triton's interpreter (TRITON_INTERPRET=1), which executes the "
                  "kernels with numpy: what a user without a GPU waits for, not what the kernels do on one.**", ""]
        lines += _interpreter_summary(rows)
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    order = ("train", "inference", "host: training", "host: op")
    for group in sorted(groups, key=lambda g: ([not g.startswith(o) for o in order], g.split(", batch ")[0],
                                               int(g.rsplit(" ", 1)[1]))):
        if group.startswith("host: training"):
            lines += _host_section(groups[group], group, variants.HOST_STEP_VARIANTS, variants.BASELINE)
            continue
        if group.startswith("host: op"):
            lines += _host_section(groups[group], group, variants.host_op_rows(), None)
            continue
        if group.startswith("train"):
            expected, baseline = variants.TRAIN_VARIANTS, variants.BASELINE
        elif group.startswith("inference"):
            expected, baseline = variants.INFERENCE_VARIANTS, variants.BASELINE
        else:
            expected, baseline = variants.OP_IMPLEMENTATIONS, "torch"
        lines += _section(groups[group], group, expected, baseline)
    return "\n".join(lines)


def plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    _plot_host(axes[2], rows)
    for ax, kind in zip(axes, ("train", "inference")):
        chosen = [r for r in rows if r["group"].startswith(kind)]
        eager = {r["batch"]: r["median"] for r in chosen if r["variant"] == variants.BASELINE}
        for variant in sorted({r["variant"] for r in chosen}):
            points = sorted((r["batch"], eager[r["batch"]] / r["median"]) for r in chosen
                            if r["variant"] == variant and r["batch"] in eager)
            if points:
                ax.plot(*zip(*points), marker="o", label=variant)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="speedup vs eager",
               title=f"{kind} ({rows[0]['device']})")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_host(ax, rows) -> None:
    """Host time per training step (launches stubbed), one bar per variant, launches on each bar."""
    chosen = {r["variant"]: r for r in rows if r["group"].startswith("host: training")}
    names = [v for v in variants.HOST_STEP_VARIANTS if v in chosen]
    if not names:
        ax.set_axis_off()
        return
    times = [chosen[v]["median"] * 1e6 for v in names]
    bars = ax.bar(names, times, color=["tab:grey" if v == variants.BASELINE else "tab:blue" for v in names])
    for bar, v in zip(bars, names):
        ax.annotate(f"{chosen[v]['launches']} launches", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="us per step", title=f"host time per training step, batch {variants.HOST_BATCH}\n"
                                       f"(launches stubbed; eager: a whole real step)")


def write(json_path, md_path, png_path) -> str:
    rows = load_rows(json_path)
    if not rows:
        raise ValueError(f"{json_path} holds no benchmark results")
    text = render(rows)
    write_text(md_path, text + "\n")
    plot(rows, png_path)
    return text
