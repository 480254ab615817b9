"""Rule fetch_weights: snakemake object -> qaclims.vlp.weights.fetch_assets.

params: assets (list of registry names, e.g. ["blip_vqa_capfilt_large", "clip_vit_l14_openai",
        "ovseg_vitl14_mpt", "resnet50_imagenet"]), dest_root (default resources/weights),
        offline (bool: never download; report what is missing).
output: the asset paths (``qaclims.vlp.weights.asset_outputs(asset, dest_root)``; directories for
        Hugging Face snapshots; plus the tensors-only copies of files that need a full
        unpickle) - checked against what the registry says.
Runnable by hand too: ``python workflow/scripts/fetch_weights.py [--offline] NAME...``.
"""

import logging
import sys
from pathlib import Path

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.vlp.weights import asset_outputs, fetch_assets, get_asset, main

if "snakemake" not in globals():  # run by hand
    sys.exit(main())

logging.basicConfig(
    filename=snakemake.log[0],
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
names = list(snakemake.params.assets)
dest_root = Path(snakemake.params.get("dest_root", "resources/weights"))
expected = {str(p) for n in names for p in asset_outputs(get_asset(n), dest_root)}
declared = {str(Path(p)) for p in snakemake.output}
if declared - expected:
    raise ValueError(f"outputs {sorted(declared - expected)} are not paths of assets {names} "
                     f"under {dest_root}; expected {sorted(expected)}")
try:
    fetch_assets(names, dest_root, offline=bool(snakemake.params.get("offline", False)))
except Exception:
    logging.getLogger("fetch_weights").exception("fetch_weights failed")
    raise
_srcpath.record_provenance(snakemake)
