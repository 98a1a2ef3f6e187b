"""Check the output of README command 1 (``python -m pandas_llm demo``): the real model answered.

    python3 .ci/check_demo.py LOG

Passes only if the demo used the real local model (SmolLM2 on llama.cpp's server, not the
loopback echo server it falls back to), its first pass answered every row with requests
the server itself counted, and its second pass came entirely from the cache: every row
from cache, 0 requests sent. Prints what it found; exits 1 with the reason otherwise.
"""

from __future__ import annotations

import re
import sys

_ENDPOINT = "Endpoint: a real LLM, SmolLM2-135M-Instruct on llama.cpp's server at http://127.0.0.1:"
_RUN = re.compile(
    r"^(First run |Second run): (?P<rows>\d+) rows, (?P<distinct>\d+) distinct prompts, "
    r"(?P<cached>\d+) rows from cache, (?P<sent>\d+) requests sent, (?P<ok>\d+) answered, (?P<failed>\d+) failed,"
)


def problems(log: str) -> list[str]:
    """What is wrong with this demo output (empty: all good)."""
    lines = log.splitlines()
    found = []
    if not any(line.startswith(_ENDPOINT) for line in lines):
        endpoint = next((line for line in lines if line.startswith("Endpoint:")), "no 'Endpoint:' line")
        found.append(f"the demo did not use the real local model: {endpoint[:160]}")
    runs = {m.group(1).strip(): {k: int(v) for k, v in m.groupdict().items()} for m in map(_RUN.match, lines) if m}
    first, second = runs.get("First run"), runs.get("Second run")
    if first is None or second is None:
        return found + [f"no summary line for the {'first' if first is None else 'second'} run"]
    if not (first["rows"] > 0 and first["ok"] == first["rows"] and first["failed"] == 0):
        found.append(f"the first run did not answer every row: {first}")
    if first["sent"] < first["distinct"] or first["cached"] != 0:
        found.append(f"the first run's requests did not reach the server: {first}")
    if not (
        second["cached"] == second["rows"] == first["rows"] and second["sent"] == 0 and second["ok"] == second["rows"]
    ):
        found.append(f"the second run did not come from the cache: {second}")
    return found


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        bad = problems(f.read())
    for problem in bad:
        print(f"CI: README command 1: {problem}", file=sys.stderr)
    if bad:
        sys.exit(1)
    print("CI: README command 1 ran the real model; the second pass came from the cache.")
