"""Print command N of the README's first ``bash`` block (the line after its ``# N.`` comment).

    python3 .ci/readme_command.py 1     # set up and run the demo
    python3 .ci/readme_command.py 2     # set up and run the tests

``.ci/run`` runs what this prints, verbatim, so CI runs exactly what a reader copies.
Stdlib only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import pathlib
import re
import sys


def command(readme: str, n: int) -> str:
    block = re.search(r"^```bash\n(.*?)^```", readme, re.S | re.M)
    if block is None:
        raise SystemExit("README.md has no ```bash block")
    lines = block.group(1).splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"#\s*{n}\.", line):
            rest = [x for x in lines[i + 1 :] if x.strip() and not x.lstrip().startswith("#")]
            if rest:
                return rest[0].strip()
    raise SystemExit(f"README.md's first ```bash block has no command after a '# {n}.' comment")


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parent.parent
    print(command((root / "README.md").read_text(encoding="utf-8"), int(sys.argv[1])))
