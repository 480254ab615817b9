"""Make src/qaclims importable in rule scripts without installing the package.

Snakemake puts this folder on sys.path of every Python rule script, so `import _srcpath` first
thing in a script works the same locally, on SLURM nodes and inside per-rule conda envs.
"""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
