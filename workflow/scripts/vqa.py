"""Rule vqa: one shard of (image, class) pairs -> answers/{shard}.parquet through the answer cache.

The model id that keys the cache is computed here from the weights and the engine's settings
(dtype, device kind, image size, decoding, question start token, engine version), never passed
as a param, so it cannot trigger reruns by itself.
"""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.determinism import configure_torch
from qaclims.devices import job_device
from qaclims.qape.answers import answer_shard_files
from qaclims.qape.engine import load_vqa_engine

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("vqa")
p = snakemake.params
try:
    configure_torch(p.threads)
    device = job_device(snakemake)
    engine, model_id = load_vqa_engine(
        p.vqa_source, device=device, dtype=p.vqa["dtype"], image_size=p.vqa["image_size"],
        num_beams=p.vqa["num_beams"], max_length=p.vqa["max_length"],
        min_length=p.vqa["min_length"])
    stats = answer_shard_files(
        manifest_path=snakemake.input.manifest, classes_path=snakemake.input.classes,
        questions_path=snakemake.input.questions, out_path=snakemake.output.answers,
        shard=p.shard, n_shards=p.n_shards, splits=p.splits, engine=engine,
        cache_dir=p.cache_dir, model_id=model_id, lemmatizer=p.lemmatizer,
        on_bad_image=p.on_bad_image,
    )
    log.info("shard %s done on %s: %s", p.shard, device, stats)
except Exception:
    log.exception("vqa failed")
    raise
_srcpath.record_provenance(snakemake)
