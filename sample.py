"""Samples a latent diffusion model into a new directory of PNGs, a grid, an .npz and a JSON.

  python sample.py --workdir=out/quickstart/ldm --class_label=3 --num_samples=16 --out=/tmp/s
  python sample.py --checkpoint=CONVERTED_DIR --prompt="a red car" --guidance_scale=3 --out=DIR
  python sample.py --checkpoint=SD15 --prompt="a lighthouse at dusk" \
      --negative_prompt="blurry, low quality" --height=512 --width=768 --out=DIR
  python sample.py --workdir=SR_RUN --cond_image=low.png --out=DIR          (super-resolution)
  python sample.py --workdir=INPAINT_RUN --image=x.png --mask=hole.png --out=DIR
  python sample.py --workdir=RUN --num_samples=50000 --stream --out=DIR   (for FID; resumable,
      any number of processes: --process_index=i --process_count=n, or jax.distributed's)

Defaults (sampler, steps, eta, guidance) come from the run's `config.sampling`. The batch is
sharded over all local devices; the same --seed gives the same images.
"""

from absl import app
from absl import flags

flags.DEFINE_string("workdir", None, "A training run (its newest checkpoint, or --step).")
flags.DEFINE_string("checkpoint", None, "A run's checkpoints/N folder, or a directory from "
                    "`python -m ldm_jax.convert` with an LDM config.")
flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the newest).")
flags.DEFINE_bool("use_ema", True, "EMA parameters, when the run kept them.")
flags.DEFINE_string("out", None, "New (or empty) output directory.")
flags.DEFINE_integer("num_samples", None, "Default: 16, or enough for every condition.")
flags.DEFINE_integer("batch_size", None, "Per call, a multiple of the local device count.")
flags.DEFINE_string("sampler", None, "ddim, ddpm, plms or dpm_solver++.")
flags.DEFINE_integer("steps", None, "Sampler steps.")
flags.DEFINE_float("eta", None, "DDIM eta (0: deterministic).")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance (1: none).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_multi_integer("class_label", None, "Class(es); default every class.")
flags.DEFINE_multi_string("prompt", None, "Caption(s) for a text-conditional model.")
flags.DEFINE_multi_string("negative_prompt", None, "Text models: what guidance steers away "
                          "from (one, or one per --prompt); default the empty caption.")
flags.DEFINE_integer("height", None, "Pixels (unconditional / class / text models; default "
                     "the model's image size).")
flags.DEFINE_integer("width", None, "Pixels (unconditional / class / text models; default "
                     "the model's image size).")
flags.DEFINE_string("cond_image", None, "Low-resolution image (super-resolution) or paired "
                    "input image (image -> image): PNG/JPEG, or .npy [K, H, W, C].")
flags.DEFINE_string("image", None, "Inpainting: the image.")
flags.DEFINE_string("mask", None, "Inpainting: the mask, white (1) = the hole to fill.")
flags.DEFINE_string("semantic_map", None, "Semantic map of class ids (gray/palette PNG, .npy).")
flags.DEFINE_bool("stream", False, "Evaluation-sized runs (unconditional / class models): "
                  "batches written to --out as drawn, resumable, then one ADM-layout "
                  "samples_NxHxWxC.npz (arr_0 images, arr_1 labels); no PNGs.")
flags.DEFINE_integer("process_index", None, "--stream: this process's share (default: "
                     "jax.process_index()).")
flags.DEFINE_integer("process_count", None, "--stream: processes sharing the run (default: "
                     "jax.process_count()).")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ldm_jax.sampling import files  # pylint: disable=import-outside-toplevel
  names = ("workdir", "checkpoint", "step", "use_ema", "out", "num_samples", "batch_size",
           "sampler", "steps", "eta", "guidance_scale", "seed", "cond_image", "image", "mask",
           "semantic_map", "height", "width")
  kwargs = {name: FLAGS[name].value for name in names}
  one_or_list = lambda values: values[0] if values and len(values) == 1 else values
  kwargs["class_label"] = one_or_list(FLAGS.class_label)
  kwargs["prompt"] = one_or_list(FLAGS.prompt)
  kwargs["negative_prompt"] = one_or_list(FLAGS.negative_prompt)
  if FLAGS.stream:
    for name in ("cond_image", "image", "mask", "semantic_map", "prompt", "negative_prompt",
                 "height", "width"):
      if kwargs.pop(name) is not None:
        raise app.UsageError(f"--{name} with --stream: evaluation-sized sampling draws "
                             f"unconditional and class-conditional models at their own "
                             f"size only.")
    path = files.run_stream(process_index=FLAGS.process_index,
                            process_count=FLAGS.process_count, **kwargs)
    print(f"wrote {path}" if path else f"this process's batches are in {FLAGS.out}/batches; "
          f"process 0 writes the .npz once all are there (run it again then if it finished "
          f"first).")
    return
  result = files.run(**kwargs)
  print(f"wrote {len(result.images)} samples, grid.png, samples.npz and settings.json to "
        f"{FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
