"""``python -m pandas_llm demo``: see pandas_llm/_demo.py."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "demo":
        print("usage: python -m pandas_llm demo [--rows N] [--no-progress]", file=sys.stderr)
        return 2
    from ._demo import main as demo

    demo(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
