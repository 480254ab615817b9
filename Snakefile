# qaclims: QA-CLIMS weakly supervised semantic segmentation as a Snakemake workflow.
# Reads like a table of contents: config, validation, one rule file per stage, the final targets.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The package lives in src/ (rule scripts import it through workflow/scripts/_srcpath.py).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))


# The demo config applies unless config files are named with --configfile: those alone then
# define the run, so a real experiment never inherits demo values by accident.
if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/qape.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/irn.smk"
include: "workflow/rules/seg.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
        report_targets(),
    default_target: True
