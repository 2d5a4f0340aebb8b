"""`make test`'s stages side by side, one per core, then each one's time and the total.

    python tests/run_stages.py --started EPOCH_SECONDS test-triton39 test-triton36

Each stage is a make target (the Makefile holds its command). The first stage's output streams to
the terminal as it runs; the others' goes to a log that is printed once the first has finished, so
the two never interleave. The exit status is 0 only when every stage passed.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time


def run_stages(stages: list, make: str, started: float) -> int:
    ready = time.time()
    logs, processes, seconds = {}, {}, {}
    for index, stage in enumerate(stages):
        command = [make, "--no-print-directory", stage]
        if index == 0:
            output = None
        else:
            logs[stage] = tempfile.TemporaryFile("w+")
            output = logs[stage]
        # A process group of its own: Ctrl-C stops the stage's pytest and everything it started.
        processes[stage] = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                            start_new_session=True)
    try:
        pending = dict(processes)
        while pending:
            for stage, process in list(pending.items()):
                if process.poll() is not None:
                    seconds[stage] = time.time() - ready
                    del pending[stage]
            time.sleep(0.2)
    except KeyboardInterrupt:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in processes.values():
            process.wait()
        print("\nmake test: stopped", file=sys.stderr)
        return 130
    for stage, log in logs.items():
        log.seek(0)
        print(f"\n===== {stage} (ran beside {stages[0]}) =====", flush=True)
        sys.stdout.write(log.read())
        log.close()
    print("\nmake test:")
    print(f"  set-up                  {ready - started:6.0f} s")
    for stage in stages:
        verdict = "passed" if processes[stage].returncode == 0 else f"FAILED (exit {processes[stage].returncode})"
        print(f"  {stage:22}  {seconds[stage]:6.0f} s  {verdict}")
    print(f"  total                   {time.time() - started:6.0f} s  (stages side by side)", flush=True)
    return 0 if all(p.returncode == 0 for p in processes.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="+", help="make targets, one per stage")
    parser.add_argument("--started", type=float, default=None,
                        help="when make test started (seconds since the epoch), so the total counts the set-up")
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="the make to run each stage with")
    args = parser.parse_args(argv)
    return run_stages(args.stages, args.make, args.started if args.started is not None else time.time())


if __name__ == "__main__":
    sys.exit(main())
