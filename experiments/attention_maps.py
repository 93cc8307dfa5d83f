"""Attention maps of one input: softmax(H_n) and H_n per layer and head, entropy per
layer and, for images, the class token's attention over the patches — baseline
and MHA side by side.

    python experiments/attention_maps.py --workdirs=runs/std,runs/mha --out=maps/
    python experiments/attention_maps.py --smoke --out=/tmp/maps     # fresh tiny ViTs, seconds

A trained run is drawn with the config it was trained with (its workdir's
config.json); --configs beside --workdirs must agree with it on the attention
settings (a mismatch is an error), and without --workdirs names fresh models.
Each model runs its config's first eval example. H_n is what the softmax sees:
the hidden state the model itself carries (its `return_intermediates` output,
so h0 = noise and resets are the model's) for MHA and RealFormer, and the scaled
scores s_n of the model's own Q and K for the other kinds, which carry nothing
between layers; the softmax uses the model's mask (causal and padding for text),
and entropies average over real (unpadded) queries only.
Writes <out>/maps_<name>.png (rows: layers; columns: heads; softmax(H_n) left,
H_n right) and .npz (the arrays drawn: h, weights [L, N, T, T]), <out>/entropy.png, <out>/cls_over_patches.png (images) and
<out>/attention_maps.json (entropy per layer and head, in nats). A missing or
empty workdir is a one-line error (--debug: the traceback) and creates nothing.
"""

import dataclasses
import json
import os
import sys

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mha_jax import attention, config_util
from mha_jax.models import decoder, param_layout
from mha_jax.train import checkpoint, tasks, workdir as workdir_lib
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("configs", "", "';'-separated config specs, one per model (fresh models, "
                    "or a check of each workdir's own config)")
flags.DEFINE_list("workdirs", [], "trained runs (config.json + checkpoints/)")
flags.DEFINE_string("out", "attention_maps", "output folder")
flags.DEFINE_bool("smoke", False, "fresh smoke ViTs, standard vs MHA")
flags.DEFINE_bool("debug", False, "show tracebacks instead of one-line errors")

SMOKE = ("configs/vit_cifar.py:smoke,attention=standard;"
         "configs/vit_cifar.py:smoke,attention=hopfield")


def captured_qk(model, params, x, kwargs):
  """Per layer (q, k) [B, T, N, D], from an unscanned copy of the model."""
  loop_model = model.clone(stack=dataclasses.replace(model.stack, scan_layers=False))
  loop_params = param_layout.unstack_layer_params(params)
  _, state = loop_model.apply(
      {"params": loop_params}, x, train=False, **kwargs,
      capture_intermediates=lambda mdl, method: method == "__call__"
      and mdl.name in ("query", "key"), mutable=["intermediates"])
  (stack,) = [v for v in state["intermediates"].values() if "layers_0" in v]
  return [(stack[f"layers_{n}"]["attention"]["query"]["__call__"][0],
           stack[f"layers_{n}"]["attention"]["key"]["__call__"][0])
          for n in range(model.stack.num_layers)]


def softmax_inputs(model, params, x, kwargs):
  """H_n per layer [L, N, T, T] of the first example: the model's carried hidden
  state where it has one, else its scaled scores (nothing is carried)."""
  _, per_layer = model.apply({"params": params}, x, train=False, return_intermediates=True,
                             **kwargs)
  if "hidden_state" in per_layer:
    return np.asarray(per_layer["hidden_state"][:, 0], np.float32)
  scale = model.stack.attention.score_scale
  return np.stack([np.asarray(attention.attention_scores(q, k, scale)[0], np.float32)
                   for q, k in captured_qk(model, params, x, kwargs)])


def run_config(workdir, spec):
  """The config a trained run was made with; `spec` ("" for none) must agree on
  the attention settings."""
  checkpoints = os.path.join(workdir, "checkpoints")
  saved = workdir_lib.read_config(workdir) if os.path.isdir(workdir) else None
  if saved is None or not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
    state = "does not exist" if not os.path.isdir(workdir) else "holds no trained run"
    raise ValueError(f"--workdirs: {workdir!r} {state}; give training workdirs (each with "
                     "config.json and checkpoints/), or none for fresh models")
  config = ml_collections.ConfigDict(saved)
  if spec:
    wanted = dict(config_util.load_config(spec).model.get("attention", {}))
    ran = dict(config.model.get("attention", {}))
    differ = [f"{k}={wanted.get(k)!r} (run: {ran.get(k)!r})"
              for k in sorted(set(wanted) | set(ran)) if wanted.get(k) != ran.get(k)]
    if differ:
      raise ValueError(f"--configs {spec!r} is not how {workdir} was trained: attention "
                       f"{', '.join(differ)}; leave out --configs to use the run's own config")
  return config


def entropy(weights_LxNxTxT, valid_T=None):
  """Per layer and head, the mean over (real) queries of each row's entropy."""
  rows_LxNxT = -(weights_LxNxTxT * np.log(np.maximum(weights_LxNxTxT, 1e-30))).sum(-1)
  return rows_LxNxT[..., valid_T].mean(-1) if valid_T is not None else rows_LxNxT.mean(-1)


def analyse(name, config, workdir):
  eval_input = train_lib.make_input(config, train=False)
  task = tasks.make_task(config, eval_input.info)
  model = train_lib.make_model(config.model, task)
  if workdir:
    params = checkpoint.load_init_params(workdir, model)
  else:
    params = nn.unbox(model.init({"params": jax.random.key(config.seed)}, task.dummy_input(),
                                 train=False)["params"])
  batch = jax.tree.map(lambda a: jnp.asarray(a[:1]), next(iter(eval_input)))
  x, kwargs = task.model_inputs(batch)
  h = softmax_inputs(model, params, x, kwargs)
  valid_T, mask = None, None
  if eval_input.info.modality == "text":
    mask = decoder.decoder_mask(x.shape[1], kwargs.get("padding_mask"))[0]   # [1, T, T]
    valid_T = np.asarray(kwargs["padding_mask"][0]) if "padding_mask" in kwargs else None
  weights = np.asarray(attention.masked_softmax(jnp.asarray(h), mask))
  return dict(name=name, label=model.stack.describe_attention(), h=h, weights=weights,
              entropy=entropy(weights, valid_T), image=eval_input.info.modality == "image")


def plot_maps(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  layers, heads = result["h"].shape[:2]
  fig, axes = plt.subplots(layers, 2 * heads, figsize=(1.6 * 2 * heads, 1.6 * layers),
                           squeeze=False)
  for n in range(layers):
    for i in range(heads):
      axes[n, i].imshow(result["weights"][n, i], cmap="magma", vmin=0)
      axes[n, heads + i].imshow(result["h"][n, i], cmap="coolwarm")
      if n == 0:
        axes[n, i].set_title(f"softmax(H) h{i}", fontsize=7)
        axes[n, heads + i].set_title(f"H h{i}", fontsize=7)
    axes[n, 0].set_ylabel(f"layer {n + 1}", fontsize=7)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  tokens = result["h"].shape[-1]
  fig.suptitle(f"{result['name']}: {result['label']}\nrows: layers 1–{layers}; columns: heads "
               f"0–{heads - 1} as softmax(H), then as H; each map: {tokens} queries (down) × "
               f"{tokens} keys (across)" + (", class token first" if result["image"] else ""),
               fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_summary(results, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for r in results:
    ax.plot(np.arange(1, len(r["entropy"]) + 1), r["entropy"].mean(-1), "-o", label=r["label"])
  ax.set(xlabel="layer", ylabel="attention entropy (nats, mean over heads/queries)")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "entropy.png"), dpi=110)
  plt.close(fig)
  images = [r for r in results if r["image"]]
  if not images:
    return
  layers = images[0]["weights"].shape[0]
  fig, axes = plt.subplots(len(images), layers, figsize=(1.6 * layers, 1.8 * len(images)),
                           squeeze=False)
  for row, r in enumerate(images):
    cls_to_patches = r["weights"][:, :, 0, 1:].mean(1)    # [L, patches], mean over heads
    side = int(round(np.sqrt(cls_to_patches.shape[-1])))
    for n in range(layers):
      axes[row, n].imshow(cls_to_patches[n].reshape(side, side), cmap="magma")
      axes[row, n].set_xticks([])
      axes[row, n].set_yticks([])
      axes[row, n].set_title(f"layer {n + 1}", fontsize=7)
    axes[row, 0].set_ylabel(r["label"].replace(" residual", "\nresidual"), fontsize=6)
  fig.suptitle(f"class token → patches (head mean), on the {side}×{side} patch grid, "
               "row-major from the top left", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "cls_over_patches.png"), dpi=100)
  plt.close(fig)


def model_specs():
  """[(name, config, workdir or None)]: fresh models from --configs/--smoke, or the
  workdirs' runs (checked against --configs when both are given)."""
  specs = [s.strip() for s in (SMOKE if FLAGS.smoke else FLAGS.configs).split(";") if s.strip()]
  if FLAGS.workdirs:
    if specs and len(specs) != len(FLAGS.workdirs):
      raise ValueError(f"--configs has {len(specs)} specs for {len(FLAGS.workdirs)} workdirs; "
                       "give one per workdir, or none")
    return [(f"{i}_{os.path.basename(os.path.normpath(w))}",
             run_config(w, specs[i] if specs else ""), w) for i, w in enumerate(FLAGS.workdirs)]
  if not specs:
    raise ValueError("nothing to draw: give --workdirs, --configs (';'-separated) or --smoke")
  return [(f"{i}_{s.partition(':')[2].replace(',', '_') or os.path.basename(s)}",
           config_util.load_config(s), None) for i, s in enumerate(specs)]


def draw(models):
  os.makedirs(FLAGS.out, exist_ok=True)
  results = []
  for name, config, workdir in models:
    results.append(analyse(name, config, workdir))
    plot_maps(results[-1], os.path.join(FLAGS.out, f"maps_{name}.png"))
    np.savez(os.path.join(FLAGS.out, f"maps_{name}.npz"), h=results[-1]["h"],
             weights=results[-1]["weights"])
  plot_summary(results, FLAGS.out)
  summary = [{"name": r["name"], "label": r["label"], "entropy_per_layer_head": r["entropy"].tolist()}
             for r in results]
  with open(os.path.join(FLAGS.out, "attention_maps.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  for r in summary:
    print(f"{r['label']}: entropy per layer",
          " ".join(f"{np.mean(e):.3f}" for e in r["entropy_per_layer_head"]))
  print("saved", FLAGS.out)


def main(_):
  try:
    draw(model_specs())
  except (ValueError, FileNotFoundError) as error:
    if FLAGS.debug:
      raise
    sys.exit(f"attention_maps.py: {error}")


if __name__ == "__main__":
  app.run(main)
