"""The README and docs/ stay true: the README is short, its headline table is the committed run's,
every link leads to a file, and every command in a fenced block names a real make target or CLI
option."""

import json
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMITTED_RUN = ROOT / "bench" / "results" / "cpu-x86-64-2core.json"
pytestmark = pytest.mark.torch_only


def fenced_lines(page: Path) -> list:
    """The lines of the page's fenced blocks other than Python code, continuation lines joined."""
    found = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S):
        if language != "python":
            found += body.replace("\\\n", " ").splitlines()
    return found


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 130, f"README.md has {len(lines)} lines"
    for page in PAGES[1:]:
        assert f"(docs/{page.name}" in README.read_text(), f"README.md does not link to docs/{page.name}"


def test_the_headline_table_is_the_committed_run():
    expected = report.headline(report.load_rows(COMMITTED_RUN))
    assert expected in README.read_text(), "README.md's headline table differs from:\n" + expected
    assert f"[`bench/results/{COMMITTED_RUN.stem}.md`]" in README.read_text()
    measured_on = json.loads(COMMITTED_RUN.read_text())["datetime"][:10]
    assert f"{measured_on}, float32" in README.read_text(), f"README.md does not give the run's date, {measured_on}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def _make_targets() -> set:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_make_command_is_a_target(page):
    targets = _make_targets()
    commands = [line for line in fenced_lines(page) if line.startswith("make ")]
    commands += re.findall(r"`(make [\w -]+)`", page.read_text())
    for command in commands:
        for word in command.split("#")[0].split()[1:]:
            if "=" not in word and not word.startswith("-"):
                assert word in targets, f"{page.name}: `{command}` names no Makefile target {word!r}"


@lru_cache(maxsize=None)
def _help(command: tuple) -> str:
    done = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cli(line: str):
    """(module and subcommand, options) of a documented `python -m` or `torchrun ... -m` line."""
    if not line.startswith(("python -m ", "torchrun ")):
        return None
    words = shlex.split(line.split("#")[0].replace("[", " ").replace("]", " "))
    if words[:2] == ["python", "-m"]:
        rest = words[2:]
    elif words[:1] == ["torchrun"] and "-m" in words:
        rest = words[words.index("-m") + 1:]
    else:
        return None
    command = rest[:1] + [w for w in rest[1:2] if w in ("onnx", "parity", "distributed", "kernels")]
    options = set()
    for word in rest:
        if word.startswith("--"):
            word = word.split("=")[0]
            options |= ({word.replace("--no-", "--"), word.replace("--[no-]", "--no-")} if "[no-]" in word else {word})
    return tuple(command), {o.replace("[no-]", "") for o in options}


@pytest.mark.slow
def test_every_documented_cli_option_exists():
    checked = 0
    for page in PAGES:
        for line in fenced_lines(page):
            parsed = _cli(line.strip())
            if parsed is None:
                continue
            command, options = parsed
            text = _help(command)
            missing = sorted(o for o in options if o not in text)
            assert not missing, f"{page.name}: `{line.strip()}`: python -m {' '.join(command)} has no {missing}"
            checked += 1
    assert checked >= 5


# The fenced commands that need no GPU, no data download and little time, run as written.
RUN_AS_WRITTEN = ["python -m lenet_triton.train --help", "python -m export --help", "python -m bench run --collect-only",
                  "python -m bench.rehearsal --list"]


@pytest.mark.parametrize("command", RUN_AS_WRITTEN)
def test_listed_commands_run_as_written(command):
    documented = {line.split("#")[0].strip() for page in PAGES for line in fenced_lines(page)}
    assert command in documented, f"`{command}` is in no fenced block of README.md or docs/"
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
