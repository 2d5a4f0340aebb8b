"""python -m bench [run | compare | report]: the benchmark suite, its report, and the regression gate.

run      runs every suite with pytest-benchmark, writes bench/results/<device>.json (pytest-benchmark's
         JSON), <device>.md and <device>.png, saves the run for `compare`, and prints the report.
compare  runs the suite again and compares it with the last saved run; exits non-zero when a
         median regressed past --fail (pytest-benchmark's --benchmark-compare-fail).
report   rewrites the .md and .png from an existing JSON.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import variants

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SAVED = ROOT / ".benchmarks"


def _pytest(extra) -> int:
    command = [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-p", "no:cacheprovider", "--benchmark-enable",
               "--benchmark-storage", f"file://{SAVED}", "--benchmark-columns", "median,iqr,rounds",
               "--benchmark-sort", "name", *extra]
    return subprocess.call(command, cwd=ROOT)


def paths():
    slug = variants.device_slug()
    return RESULTS / f"{slug}.json", RESULTS / f"{slug}.md", RESULTS / f"{slug}.png"


def run() -> int:
    from .report import write

    json_path, md_path, png_path = paths()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "run.json"
        code = _pytest([f"--benchmark-json={raw}", "--benchmark-autosave"])
        if not raw.exists():
            print("bench: no results were written (see the pytest output above)", file=sys.stderr)
            return code or 1
        tmp_json = json_path.with_suffix(".json.tmp")
        shutil.copyfile(raw, tmp_json)
        os.replace(tmp_json, json_path)
    print(write(json_path, md_path, png_path))
    print(f"\nwrote {json_path.relative_to(ROOT)}, {md_path.name} and {png_path.name}")
    if code:
        print("bench: some benchmarks failed (a variant that disagrees with eager is not timed); see above",
              file=sys.stderr)
    return code


def compare(fail: str) -> int:
    if not any(SAVED.glob("*/*.json")):
        print("bench compare: no saved run to compare with; run `make bench` first", file=sys.stderr)
        return 2
    return _pytest(["--benchmark-compare", f"--benchmark-compare-fail={fail}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "compare", "report"])
    parser.add_argument("--fail", default="median:10%", help="regression threshold for compare")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.fail)
    if args.command == "report":
        from .report import write
        json_path, md_path, png_path = paths()
        if not json_path.exists():
            print(f"bench report: {json_path} does not exist; run `make bench` first", file=sys.stderr)
            return 2
        print(write(json_path, md_path, png_path))
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
