"""python -m bench [run | compare | report | gpu-check | kernels | distributed]: the benchmark suite, its report, the
regression gate, and the whole GPU check.

run        runs every suite with pytest-benchmark, writes <results>/<device>.json (pytest-benchmark's
           JSON), <device>.md and <device>.png (results: bench/results unless --results), saves the
           run for `compare`, and prints the report. --collect-only only collects the suites.
compare    runs the suite again and compares it with the last saved run; exits non-zero when a
           median regressed past --fail (pytest-benchmark's --benchmark-compare-fail).
report     rewrites the .md and .png from an existing JSON.
gpu-check  versions, the test suite and the benchmark grid in one call on a GPU machine, every file
           under --out (see bench/gpu_check.py).
kernels    the kernel report, bench/results/kernels-sm90.md and .json: every launch of the public API
           rehearsed for an H100 on this CPU (see bench/kernels.py; `python -m bench kernels -h`).
distributed  the training step across ranks of this machine beside one process, and the collective's
           share (bench/results/<device>-distributed.md; see bench/distributed.py).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from lenet_triton.files import atomic_path

from . import variants

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SAVED = ROOT / ".benchmarks"


# Most important first, so that a run stopped early (Ctrl-C, gpu-check's time limit) has the step times.
SUITES = ["test_train_step.py", "test_inference.py", "test_host.py", "test_ops.py"]


def _pytest(extra) -> int:
    command = [sys.executable, "-m", "pytest", *(str(ROOT / "bench" / suite) for suite in SUITES),
               "-p", "no:cacheprovider", "--benchmark-enable", "--benchmark-storage", f"file://{SAVED}",
               "--benchmark-columns", "median,iqr,rounds", "--benchmark-sort", "name", *extra]
    process = subprocess.Popen(command, cwd=ROOT, preexec_fn=_default_sigint)
    # On Ctrl-C pytest stops after the current benchmark and still writes its JSON; this process
    # waits for that and then writes the report of what was timed.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_sigint():
    # A process started in the background inherits an ignored SIGINT; pytest needs it to stop cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def paths(results=RESULTS):
    slug = variants.device_slug()
    return results / f"{slug}.json", results / f"{slug}.md", results / f"{slug}.png"


def run(results=RESULTS, collect_only=False) -> int:
    from .report import write

    if collect_only:
        return _pytest(["--collect-only", "-q"])
    json_path, md_path, png_path = paths(results)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "run.json"
        code = _pytest([f"--benchmark-json={raw}", "--benchmark-autosave"])
        if not raw.exists():
            print("bench: no results were written (see the pytest output above)", file=sys.stderr)
            return code or 1
        with atomic_path(json_path) as tmp_json:
            shutil.copyfile(raw, tmp_json)
    print(write(json_path, md_path, png_path))
    print(f"\nwrote {json_path}, {md_path.name} and {png_path.name}")
    if code == 2:
        print("bench: interrupted; the report holds what was timed before that", file=sys.stderr)
    elif code:
        print("bench: some benchmarks failed (a variant that disagrees with eager is not timed); see above",
              file=sys.stderr)
    return code


def compare(fail: str) -> int:
    if not any(SAVED.glob("*/*.json")):
        print("bench compare: no saved run to compare with; run `make bench` first", file=sys.stderr)
        return 2
    return _pytest(["--benchmark-compare", f"--benchmark-compare-fail={fail}"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kernels"]:
        from .kernels import main as kernels_main
        return kernels_main(argv[1:])
    if argv[:1] == ["distributed"]:
        from .distributed import main as distributed_main
        return distributed_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run",
                        choices=["run", "compare", "report", "gpu-check", "kernels", "distributed"])
    parser.add_argument("--fail", default="median:10%", help="regression threshold for compare")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where run writes its JSON, MD and PNG")
    parser.add_argument("--collect-only", action="store_true", help="run: only collect the suites")
    parser.add_argument("--out", type=Path, help="gpu-check: the folder for its files (default: $OUT)")
    parser.add_argument("--fast", action="store_true", help="gpu-check: a smoke subset that fits in 2 minutes")
    parser.add_argument("--dry-run", action="store_true",
                        help="gpu-check: start every step but only collect the tests and benchmarks")
    args = parser.parse_args(argv)
    if args.command == "gpu-check":
        from .gpu_check import gpu_check
        out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
        if out is None:
            parser.error("gpu-check needs --out DIR (or $OUT)")
        return gpu_check(out, fast=args.fast, dry_run=args.dry_run)
    if args.command == "compare":
        return compare(args.fail)
    if args.command == "report":
        from .report import write
        json_path, md_path, png_path = paths(args.results)
        if not json_path.exists():
            print(f"bench report: {json_path} does not exist; run `make bench` first", file=sys.stderr)
            return 2
        print(write(json_path, md_path, png_path))
        return 0
    return run(args.results, args.collect_only)


if __name__ == "__main__":
    sys.exit(main())
