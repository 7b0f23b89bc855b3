"""Print one of the README's two fresh-machine command lines: ``demo`` or ``test``.

The README's first ```bash block holds exactly two commands: the demo (it runs ``kernel.train``)
and the test suite (it runs ``pytest``). CI runs the second one as written, so the README and CI
cannot drift apart. Exits 1, naming the problem, when the block is not as described.
"""
import re
import sys
from pathlib import Path

readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
block = re.search(r"```bash\n(.*?)```", readme, re.S)
lines = [l.split("  #")[0].strip() for l in block.group(1).splitlines()] if block else []
lines = [l for l in lines if l and not l.startswith("#")]
want = {"demo": "kernel.train", "test": "pytest"}[sys.argv[1]]
found = [l for l in lines if want in l]
if len(lines) != 2 or len(found) != 1:
    sys.exit(f"README.md: the first ```bash block must hold exactly two commands (demo, tests); found {lines}")
print(found[0])
