""".ci/run runs the README's commands verbatim, and fails unless the demo answered with the real
model and its second pass came from the cache. Checked in a sandbox: a copy of .ci/ beside a
README whose commands are stand-ins (a real CI run builds llama.cpp: minutes)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What the demo prints with the real model (its lines, as README command 1 shows them).
REAL = """\
Endpoint: a real LLM, SmolLM2-135M-Instruct on llama.cpp's server at http://127.0.0.1:42633/v1 (CPU, offline, no key)
Cache:    /tmp/pandas-llm-demo-x/cache.sqlite

First run : 20 rows, 20 distinct prompts, 0 rows from cache, 20 requests sent, 20 answered, 0 failed, 1156 prompt + 283 completion tokens, $0.0003, 11.09s
Second run: 20 rows, 20 distinct prompts, 20 rows from cache, 0 requests sent, 20 answered, 0 failed, 0 prompt + 0 completion tokens, $0.0000, 0.00s
"""
LOOPBACK = REAL.replace("a real LLM, SmolLM2-135M-Instruct on llama.cpp's server at", "the built-in loopback server at")
ALL_FAILED = REAL.replace("20 requests sent, 20 answered, 0 failed", "120 requests sent, 0 answered, 20 failed")
NOT_CACHED = REAL.replace("20 rows from cache, 0 requests sent", "0 rows from cache, 20 requests sent")


def readme_commands() -> list[str]:
    """The commands of the README's first bash block, read independently of .ci/."""
    block = ROOT.joinpath("README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_reads_both_commands_out_of_the_readme():
    res = subprocess.run([str(ROOT / ".ci/run"), "--print-commands"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == readme_commands()
    demo, tests = readme_commands()
    assert demo.endswith("python -m pandas_llm demo") and "pytest" in tests
    # the portable build, and never a wheel from pip's cache built with other flags
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in demo and "--no-cache-dir" in demo


@pytest.mark.parametrize(
    "output, problem",
    [
        (REAL, None),
        (LOOPBACK, "did not use the real local model: Endpoint: the built-in loopback server"),
        (ALL_FAILED, "the first run did not answer every row"),
        (NOT_CACHED, "the second run did not come from the cache"),
        ("Endpoint: nothing\n", "no summary line for the first run"),
    ],
)
def test_the_demo_check(output, problem, tmp_path):
    log = tmp_path / "demo.log"
    log.write_text(output)
    res = subprocess.run([sys.executable, str(ROOT / ".ci/check_demo.py"), str(log)], capture_output=True, text=True)
    if problem is None:
        assert res.returncode == 0 and "ran the real model" in res.stdout, res.stderr
    else:
        assert res.returncode == 1 and problem in res.stderr


def sandbox(tmp_path: pathlib.Path, demo_output: str, test_output: str) -> tuple[pathlib.Path, dict]:
    """A checkout whose README commands are stand-ins that leave a mark, and a PATH whose
    chromium exists (so CI does not try to install it)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / ".ci", repo / ".ci")
    (repo / "demo.out").write_text(demo_output)
    (repo / "tests.out").write_text(test_output)
    readme = ROOT.joinpath("README.md").read_text()
    demo, tests = readme_commands()
    readme = readme.replace(demo, 'mkdir -p .venv && touch ran-1 && cat "demo.out"', 1)
    readme = readme.replace(tests, 'test -e ran-1 && touch ran-2 && cp -r venv-bin .venv/bin && cat "tests.out"', 1)
    (repo / "README.md").write_text(readme)
    # the .venv's python as command 2 leaves it, for the checks after it: it logs what it is asked
    # to run, and fails when asked for what the file fail-check names
    (repo / "venv-bin").mkdir()
    (repo / "venv-bin" / "python").write_text(
        '#!/bin/sh\necho "$*" >> checks.log\nif [ -e fail-check ] && [ "$*" = "$(cat fail-check)" ]; then exit 3; fi\n'
    )
    (repo / "venv-bin" / "python").chmod(0o755)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "chromium").write_text("#!/bin/sh\n")
    (bin_ / "chromium").chmod(0o755)
    return repo, {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}


def test_ci_runs_readme_command_1_verbatim_then_the_tests(tmp_path):
    repo, env = sandbox(tmp_path, REAL, "===== 412 passed in 99.0s =====\n")
    res = subprocess.run([str(repo / ".ci/run")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (repo / "ran-1").exists() and (repo / "ran-2").exists()
    assert 'CI: README command 1: mkdir -p .venv && touch ran-1 && cat "demo.out"' in res.stdout
    assert "CI: README command 1 ran the real model" in res.stdout
    assert re.search(r"CI: README command 1 took \d+ s", res.stdout)
    assert (repo / "checks.log").read_text().splitlines() == CHECKS


# What .ci/run asks of the .venv's python after the tests, in order.
CHECKS = ["-m pip install -q -e .[dev]", "-m ruff format --check .", "-m ruff check .", "-m mypy"]


@pytest.mark.parametrize("failing", CHECKS[1:])
def test_ci_fails_when_a_check_after_the_tests_fails(failing, tmp_path):
    repo, env = sandbox(tmp_path, REAL, "1 passed")
    (repo / "fail-check").write_text(failing)
    res = subprocess.run([str(repo / ".ci/run")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1 and f"CI: '.venv/bin/python {failing}' failed." in res.stderr
    assert (repo / "checks.log").read_text().splitlines() == CHECKS[: CHECKS.index(failing) + 1]


@pytest.mark.parametrize(
    "demo_output, tests_output, says",
    [
        (LOOPBACK, "1 passed", "did not use the real local model"),
        (NOT_CACHED, "1 passed", "the second run did not come from the cache"),
        (REAL, "410 passed, 2 skipped in 9.0s", "some tests were skipped"),
    ],
)
def test_ci_fails_on_a_demo_without_the_real_model_or_a_skipped_test(demo_output, tests_output, says, tmp_path):
    repo, env = sandbox(tmp_path, demo_output, tests_output)
    res = subprocess.run([str(repo / ".ci/run")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and says in res.stderr
    assert (repo / "ran-2").exists() == (says == "some tests were skipped")


def test_ci_stops_when_readme_command_1_fails(tmp_path):
    repo, env = sandbox(tmp_path, REAL, "1 passed")
    readme = (repo / "README.md").read_text().replace('cat "demo.out"', 'cat "demo.out" && exit 7', 1)
    (repo / "README.md").write_text(readme)
    res = subprocess.run([str(repo / ".ci/run")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 7 and "README command 1 failed with status 7" in res.stderr
    assert not (repo / "ran-2").exists()
