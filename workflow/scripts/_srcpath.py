"""Make src/qaclims importable in rule scripts without installing the package; provenance hook.

Snakemake puts this folder on sys.path of every Python rule script, so `import _srcpath` first
thing in a script works the same locally, on SLURM nodes and inside per-rule conda envs. The last
line of every rule script is `_srcpath.record_provenance(snakemake)`: it runs only when the script
got that far (an exception skips it), and writes each output's `<output>.meta.json`.
"""

import multiprocessing
import os
import sys
import time
from pathlib import Path

STARTED = time.time()
"""When the rule script started (this module is its first import): the provenance start time."""

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def record_provenance(smk) -> None:
    """Write the ``<output>.meta.json`` sidecar of every output of the finished job; call it last
    in a rule script, after the outputs are complete (see qaclims.provenance)."""
    if multiprocessing.parent_process() is not None or os.environ.get("RANK", "0") != "0":
        return  # a worker or a non-zero DDP rank: the job's own process records it
    from qaclims.provenance import record_provenance as record

    record(smk, started=STARTED)
