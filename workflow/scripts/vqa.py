"""Rule vqa: one shard of (image, class) pairs -> answers/{shard}.parquet through the answer cache.

The model id that keys the cache is computed here from the weights and the decoding settings,
never passed as a param, so it cannot trigger reruns by itself.
"""

import logging

import _srcpath  # noqa: F401  (puts src/ on sys.path)

from qaclims.devices import job_device
from qaclims.qape.answer_cache import model_fingerprint
from qaclims.qape.answers import answer_shard_files
from qaclims.qape.engine import VqaEngine
from qaclims.vlp.blip import load_blip_vqa

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("vqa")
p = snakemake.params
settings = dict(num_beams=p.vqa["num_beams"], max_length=p.vqa["max_length"],
                min_length=p.vqa["min_length"])
try:
    device = job_device(snakemake)
    vqa = load_blip_vqa(p.vqa_source, device=device, image_size=p.vqa["image_size"], **settings)
    model_id = model_fingerprint(vqa.model_id, vqa.model_id, image_size=vqa.image_size, **settings)
    engine = VqaEngine(vqa.model, vqa.processor, image_size=vqa.image_size, device=device,
                       **settings)
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
