"""Attention maps of one input: softmax(H_n) and H_n per layer and head, entropy per
layer and, for images, the class token's attention over the patches — baseline
and MHA side by side.

    python experiments/attention_maps.py \\
        --configs='configs/vit_cifar.py:smoke,attention=standard;configs/vit_cifar.py:smoke,attention=hopfield' \\
        --workdirs=runs/std,runs/mha --out=maps/
    python experiments/attention_maps.py --smoke --out=/tmp/maps     # fresh tiny ViTs, seconds

Each model runs its own config's first eval example. H_n is what the softmax
sees: the hidden state for MHA and RealFormer, the scaled scores s_n for the other
kinds. Q and K are captured from the model's own projections, and s_n, H_n and
the softmax come from mha_jax.attention, so the maps are the model's numbers.
Writes <out>/maps_<name>.png (rows: layers; columns: heads; softmax(H_n) left,
H_n right), <out>/entropy.png, <out>/cls_over_patches.png (images) and
<out>/attention_maps.json (entropy per layer and head, in nats).
"""

import dataclasses
import json
import os

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention
from mha_jax.models import param_layout
from mha_jax.train import checkpoint, config_util, tasks
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("configs", "", "';'-separated config specs, one per model")
flags.DEFINE_list("workdirs", [], "trained runs, one per config (default: fresh init)")
flags.DEFINE_string("out", "attention_maps", "output folder")
flags.DEFINE_bool("smoke", False, "fresh smoke ViTs, standard vs MHA")

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


def hidden_states(att, qk, mask):
  """H_n per layer [N, T, T] for the first example, by attention.hopfield_attention."""
  h_prev, out = None, []
  for n, (q, k) in enumerate(qk):
    restart = n == 0 or (att.reset_every and n % att.reset_every == 0)
    if att.kind == "hopfield":
      _, h = attention.hopfield_attention(q, k, k, h_prev, alpha_hidden=att.alpha_hidden,
                                          mask=mask, h0=att.h0 if att.h0 != "noise" else "zeros",
                                          restart=restart, scale=att.score_scale)
    elif att.kind == "realformer":
      _, h = attention.hopfield_attention(q, k, k, h_prev, alpha_hidden=1.0, score_weight=1.0,
                                          mask=mask, restart=restart, scale=att.score_scale)
    else:
      h = attention.attention_scores(q, k, att.score_scale)
    h_prev = h
    out.append(np.asarray(h[0]))
  return np.stack(out)   # [L, N, T, T]


def entropy(weights_LxNxTxT):
  return -(weights_LxNxTxT * np.log(np.maximum(weights_LxNxTxT, 1e-30))).sum(-1).mean(-1)


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
  length = x.shape[1] if eval_input.info.kind == "text" else None
  mask = attention.causal_mask(length) if length else None
  h = hidden_states(model.stack.attention, captured_qk(model, params, x, kwargs), mask)
  weights = np.asarray(attention.masked_softmax(jnp.asarray(h), None if mask is None
                                                else mask[0]))
  return dict(name=name, label=model.stack.describe_attention(), h=h, weights=weights,
              entropy=entropy(weights), image=eval_input.info.kind == "image")


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
  fig.suptitle(f"{result['name']}: {result['label']}", fontsize=8)
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
  fig.suptitle("class token → patches (head mean)", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "cls_over_patches.png"), dpi=100)
  plt.close(fig)


def main(_):
  specs = [s.strip() for s in (SMOKE if FLAGS.smoke else FLAGS.configs).split(";") if s.strip()]
  if not specs:
    raise app.UsageError("give --configs (';'-separated) or --smoke")
  if FLAGS.workdirs and len(FLAGS.workdirs) != len(specs):
    raise app.UsageError(f"{len(FLAGS.workdirs)} workdirs for {len(specs)} configs")
  os.makedirs(FLAGS.out, exist_ok=True)
  results = []
  for i, spec in enumerate(specs):
    name = f"{i}_{spec.partition(':')[2].replace(',', '_') or os.path.basename(spec)}"
    results.append(analyse(name, config_util.load_config(spec),
                           FLAGS.workdirs[i] if FLAGS.workdirs else None))
    plot_maps(results[-1], os.path.join(FLAGS.out, f"maps_{name}.png"))
  plot_summary(results, FLAGS.out)
  summary = [{"name": r["name"], "label": r["label"], "entropy_per_layer_head": r["entropy"].tolist()}
             for r in results]
  with open(os.path.join(FLAGS.out, "attention_maps.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  for r in summary:
    print(f"{r['label']}: entropy per layer",
          " ".join(f"{np.mean(e):.3f}" for e in r["entropy_per_layer_head"]))
  print("saved", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
