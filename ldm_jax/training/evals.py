"""Sample-quality metrics during training: `config.evals`, named evaluators (in the spirit of
big_vision's), each run every `every` steps and at the last step, logged as `<name>/<metric>`.

  config.evals.fid = ml_collections.ConfigDict(dict(
      type="fid", every=5000, num_samples=10_000, weights="inception_fid.npz"))

type 'fid' (LDM stage): `num_samples` images of the sampling (EMA) parameters, drawn as
  `sample.py --stream` draws them (classes spread evenly, fixed seeds: one evaluation is
  comparable with the next), against the statistics of the run's data `split` (default
  data.train_split, the papers' reference), as the evaluation pipeline preprocesses it,
  quantised to uint8, cached in `cache_dir` (ldm_jax/eval/references.py).
type 'rfid' (autoencoder stage): reconstructions of the first `num_samples` images of `split`
  (default data.eval_split) against those images: the rFID of the LDM paper's tables.

Other keys (defaults in `DEFAULTS`): `metrics` (some of fid, sfid, isc, kid, prc), `mode`,
`fid_method` ('sqrtm' needs 2048 samples at least: use 'eigvals' below), `batch_size`
(Inception and sampling), `seed`, `sampling` (sampler / steps / eta / guidance_scale over
config.sampling), `reference` (a statistics .npz or image set instead of the data split: needed
for runs reading a latent cache), `kid_subsets`, `kid_subset_size`. Everything is checked, the
weights read, before the first step. With several processes, each draws and measures its
part of the samples (ldm_jax/eval/features.py gathers the features).
"""

import dataclasses

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ldm_jax import visualize
from ldm_jax.eval import features as features_lib
from ldm_jax.eval import fid as fid_lib
from ldm_jax.eval import image_sets
from ldm_jax.eval import references
from ldm_jax.metrics import generative
from ldm_jax.metrics import inception

TYPES = {"fid": "ldm", "rfid": "autoencoder"}  # Evaluator type -> the stage it measures.
DEFAULTS = dict(type=None, every=None, num_samples=None, weights=None, metrics=("fid",),
                mode="tf1", fid_method="sqrtm", batch_size=64, seed=0, split=None,
                reference=None, cache_dir=references.DEFAULT_CACHE, sampling={},
                kid_subsets=100, kid_subset_size=1000)
SAMPLING_KEYS = ("sampler", "steps", "eta", "guidance_scale")


def _block(name: str, block, stage_name: str) -> dict:
  block = dict(block.to_dict() if isinstance(block, ml_collections.ConfigDict) else block)
  where = f"evals.{name}"
  unknown = sorted(set(block) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(DEFAULTS)}.")
  block = {**DEFAULTS, **block}
  for key in ("type", "every", "num_samples", "weights"):
    if block[key] is None:
      raise ValueError(f"{where}.{key} is required.")
  if block["type"] not in TYPES:
    raise ValueError(f"{where}.type={block['type']!r}: expected one of {sorted(TYPES)}.")
  if TYPES[block["type"]] != stage_name:
    raise ValueError(f"{where}.type={block['type']!r} measures the {TYPES[block['type']]} "
                     f"stage; this run trains the {stage_name} stage.")
  for key in ("every", "num_samples", "batch_size"):
    if int(block[key]) < 1:
      raise ValueError(f"{where}.{key}={block[key]}: expected a positive number.")
  if block["num_samples"] < 2:
    raise ValueError(f"{where}.num_samples={block['num_samples']}: the metrics need 2.")
  bad = sorted(set(block["metrics"]) - set(fid_lib.METRICS))
  if bad or not block["metrics"]:
    raise ValueError(f"{where}.metrics={tuple(block['metrics'])}: expected some of "
                     f"{fid_lib.METRICS}.")
  if block["mode"] not in inception.MODES:
    raise ValueError(f"{where}.mode={block['mode']!r}: expected one of {inception.MODES}.")
  if block["fid_method"] not in generative.FID_METHODS:
    raise ValueError(f"{where}.fid_method={block['fid_method']!r}: expected one of "
                     f"{generative.FID_METHODS}.")
  if block["fid_method"] == "sqrtm" and block["num_samples"] < features_lib.MIN_RELIABLE:
    raise ValueError(f"{where}: fid_method='sqrtm' on {block['num_samples']} samples (fewer "
                     f"than pool3's 2048 dimensions) fails on an ill-defined square root; use "
                     f"fid_method='eigvals' or num_samples >= {features_lib.MIN_RELIABLE}.")
  if "kid" in block["metrics"] and block["num_samples"] < block["kid_subset_size"]:
    raise ValueError(f"{where}: kid with kid_subset_size={block['kid_subset_size']} needs as "
                     f"many samples (num_samples={block['num_samples']}).")
  if block["type"] == "rfid" and "[" in (block["split"] or ""):
    raise ValueError(f"{where}: type 'rfid' takes the first num_samples images of a whole "
                     f"split; split={block['split']!r} is a slice.")
  extra = sorted(set(block["sampling"]) - set(SAMPLING_KEYS))
  if extra:
    raise ValueError(f"{where}.sampling: unknown keys {extra}; expected some of "
                     f"{SAMPLING_KEYS}.")
  return block


@dataclasses.dataclass
class Evaluator:
  name: str
  block: dict
  extractor: features_lib.Extractor
  sha: str
  reference: references.Statistics | None = None
  # Built at the first evaluation, kept (with its compiled programs): 'fid' the Sampler,
  # 'rfid' the jitted reconstruction.
  model: object = None

  def due(self, step: int, last_step: int) -> bool:
    return step % int(self.block["every"]) == 0 or step == last_step


def create(config: ml_collections.ConfigDict) -> list[Evaluator]:
  """The run's evaluators, checked and with their Inception weights loaded (or [])."""
  evals = config.get("evals") or {}
  made = []
  for name in sorted(evals.keys() if hasattr(evals, "keys") else evals):
    block = _block(name, evals[name], config.stage)
    if block["reference"] is None and config.data.get("latent_key"):
      raise ValueError(f"evals.{name}: the run reads a latent cache, which holds no images; "
                       f"set evals.{name}.reference to a statistics .npz or image set "
                       f"(python -m ldm_jax.eval.fid --save_stats makes one).")
    kind = config.get("conditioning", {}).get("type", "none")
    if block["type"] == "fid" and kind not in ("none", "class"):
      raise ValueError(f"evals.{name}: type 'fid' draws unconditional and class-conditional "
                       f"models; this run is conditioned by {kind!r}.")
    params, info = inception.load_params(block["weights"])
    devices = jax.local_devices()
    made.append(Evaluator(name, block, features_lib.Extractor(
        params, block["mode"], devices, block["batch_size"]), info["source_sha256"]))
  return made


def _host(tree):
  """A (possibly sharded, multi-process) tree of arrays as host NumPy on every process."""
  return jax.tree.map(lambda a: np.asarray(
      a if a.is_fully_addressable else multihost_utils.process_allgather(a, tiled=True)),
                      tree)


def _reference(ev: Evaluator, config) -> references.Statistics:
  block = ev.block
  keep_pool3 = bool({"kid", "prc"} & set(block["metrics"]))
  if block["reference"] is not None:
    path = block["reference"]
    if references.is_statistics_file(path):
      return references.load(path)
    return references.measure(image_sets.open_images(path), ev.extractor, ev.sha,
                              keep_pool3=keep_pool3)
  if block["type"] == "rfid":
    images = _originals(config, block)
  else:
    images = image_sets.from_data(config.data, block["split"] or config.data.train_split)
  # The split as read ('test[:8]' for rfid's first 8) names the images.
  key = fid_lib.data_key(config.data, images.split)
  stats, _ = references.cached(images, key, ev.extractor, ev.sha,
                               cache_dir=block["cache_dir"], keep_pool3=keep_pool3)
  return stats


def _samples(ev: Evaluator, stage, state, config, step: int) -> image_sets.ImageSet:
  block = ev.block
  if block["type"] == "fid":
    from ldm_jax.sampling import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
    params = _host(stage.sampling_params(state))
    source = f"training step {step}"
    if ev.model is None:
      ev.model = sampler_lib.Sampler(stage.model, params, config, step=step, source=source)
    else:
      ev.model.set_params(params, step, source)
    return image_sets.from_sampler(ev.model, block["num_samples"], seed=block["seed"],
                                   batch_size=block["batch_size"], **block["sampling"])
  # rfid: the reconstructions of the reference images.
  ae_params = _host(state.params["generator"]["autoencoder"])
  originals = _originals(config, block)
  if ev.model is None:
    ev.model = jax.jit(stage.reconstruct)
  batch_size = ev.extractor.batch_size

  def reconstruct(images):
    count = len(images)  # The last batch padded: one program.
    x = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
    recon = ev.model(ae_params, x.astype(np.float32) / 127.5 - 1.0)
    return visualize.to_uint8(np.asarray(recon)[:count])
  return image_sets.mapped(originals, reconstruct, f"reconstructions of {originals.name}")


def _originals(config, block) -> image_sets.ImageSet:
  """rfid: the first num_samples images of the split."""
  split = block["split"] or config.data.eval_split
  return image_sets.from_data(config.data, f"{split}[:{block['num_samples']}]")


def run(evaluators: list[Evaluator], stage, state, config, step: int) -> dict:
  """The due evaluators' metrics as {'<name>/<metric>': value}; with several processes, each
  draws and extracts its part of the samples (and of the reference, when it is measured),
  and process 0 computes the metrics ({} elsewhere)."""
  results = {}
  for ev in evaluators:
    if not ev.due(step, int(config.num_steps)):
      continue
    block = ev.block
    images = _samples(ev, stage, state, config, step)
    if ev.reference is None:
      ev.reference = _reference(ev, config)
    metrics = tuple(block["metrics"])
    ours = references.measure(images, ev.extractor, ev.sha,
                              keep_pool3=bool({"kid", "prc"} & set(metrics)),
                              keep_logits="isc" in metrics)
    if jax.process_index() > 0:  # It took part in the extraction; process 0 measures.
      continue
    found = fid_lib.compare(ours, ev.reference, metrics, fid_method=block["fid_method"],
                            kid_subsets=block["kid_subsets"],
                            kid_subset_size=block["kid_subset_size"])
    named = {f"{ev.name}/{k}": float(v) for k, v in found.items()
             if isinstance(v, float) and k not in ("num_samples", "num_reference")}
    logging.info("Step %d %s (%d samples vs %s): %s", step, ev.name, ours.count,
                 ev.reference.name, named)
    results.update(named)
  return results
