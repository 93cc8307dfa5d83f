"""Context wells in trained models (issue 20 §5, RESULTS.md row i).

Trains a tiny GPT on Shakespeare characters and a tiny ViT on sklearn digits with
standard attention (the training setups of the `gpt_char` and `vit_depth` sweeps,
fewer layers and steps), then, per layer and head, iterates every query of the
first eval batch to a fixed point of the Ramsauer energy

    E(ξ) = −β⁻¹ lse_s(β ξ·k_s) + ½‖ξ‖²,   ξ ← Kᵀ softmax(β K ξ),   ξ⁰ = q

with the layer's own q, k (the model's `return_intermediates` output), its own β
(`score_scale`) and its own mask (causal for the GPT), by `energy.converge`. It
records the updates each query needs until ‖Δξ‖ ≤ tol, the energy drop
E(q) − E(ξ*), and the well type of the weights at the start (the trained
attention itself) and at the fixed point: single (one key holds 90 % of the
weight), metastable, or global (more than half the allowed keys needed).
"Context wells" as fixed points of this update is this codebase's reading of the
paper's abstract (mha_jax/energy.py says what is whose).

    python experiments/context_wells.py --json=sweeps/context_wells/context_wells.json \\
        --plot=sweeps/context_wells/context_wells.png
    python experiments/context_wells.py --smoke --json=/tmp/w.json --plot=/tmp/w.png
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention, energy
from mha_jax.models import decoder
from mha_jax.sweep import grid, vmapped
from mha_jax import config_util
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
# name: the sweep preset whose training setup the model uses
MODELS = {"gpt_char": "gpt_char", "vit_digits": "vit_depth"}


def train_models(preset, *, depth, steps, seeds):
  """(VmappedGroup after `steps` steps of one standard-attention run per seed, eval
  metrics per seed)."""
  sweep = config_util.load_config(f"configs/sweep.py:preset={preset}")
  cell = dict(dict.fromkeys(grid.AXES), kind="standard", depth=depth, seed=seeds[0])
  config = grid.cell_config(grid.base_config(sweep), cell)
  config.total_steps = steps
  runs = vmapped.VmappedGroup(config, [vmapped.RunSetting(s, None, None) for s in seeds])
  runs.train(steps)
  return runs, runs.evaluate(sweep.eval_steps)


def queries_keys(runs, run):
  """(q, k [L, B, T, N, D], mask [1|B, 1, T, T] or None, valid queries [B, T]) of run
  `run` on the first eval batch, read from the model's own intermediates."""
  batch = jax.tree.map(jnp.asarray, next(iter(train_lib.make_input(runs.config, train=False))))
  x, kwargs = runs.task.model_inputs(batch)
  params = jax.tree.map(lambda a: a[run], runs.states["params"])
  _, inter = runs.model.apply({"params": params}, x, train=False, return_intermediates=True,
                              **kwargs)
  if "padding_mask" in kwargs:   # text: the decoder's causal mask, and'ed with padding
    valid = np.asarray(kwargs["padding_mask"])
    return inter["query"], inter["key"], decoder.decoder_mask(x.shape[1], kwargs[
        "padding_mask"]), valid
  return inter["query"], inter["key"], None, np.ones(inter["query"].shape[1:3], bool)


def layer_wells(q_BxTxNxD, k_BxTxNxD, mask, valid_BxT, *, beta, tol, max_steps):
  """Per head [N] of one layer over its valid queries: mean and max updates to
  converge, fraction converged, mean energy drop E(q) − E(ξ*), and the fraction of
  queries in each well type at the start and at the fixed point ([N, 3])."""
  found = energy.converge(q_BxTxNxD, k_BxTxNxD, beta=beta, mask=mask, tol=tol,
                          max_steps=max_steps)
  options = dict(beta=beta, mask=mask)
  drop = (energy.hopfield_energy(q_BxTxNxD.astype(jnp.float32), k_BxTxNxD, **options)
          - energy.hopfield_energy(found.fixed_point, k_BxTxNxD, **options))
  start_weights = energy.separate(attention.attention_scores(q_BxTxNxD, k_BxTxNxD, beta),
                                  separation="softmax", mask=mask)
  _, start_type = energy.well_types(start_weights, mask)
  valid = np.asarray(valid_BxT)
  pick = lambda a: np.asarray(a)[valid]   # [queries, N]  # noqa: E731
  steps, types = pick(found.steps), pick(found.well_type)
  fractions = lambda t: np.stack(  # noqa: E731
      [(t == i).mean(0) for i in range(len(energy.WELL_TYPES))], -1)
  return dict(mean_steps=steps.mean(0).tolist(), max_steps=steps.max(0).tolist(),
              converged=pick(found.converged).mean(0).tolist(),
              energy_drop=pick(drop).mean(0).tolist(),
              start_wells=fractions(pick(start_type)).tolist(),
              fixed_point_wells=fractions(types).tolist())


def model_wells(name, *, depth, steps, seeds, tol, max_steps):
  """The record of one model family: per seed its eval metrics and per layer
  `layer_wells`."""
  start = time.perf_counter()
  runs, evals = train_models(MODELS[name], depth=depth, steps=steps, seeds=seeds)
  beta = runs.config.model.attention.get("score_scale")
  per_seed = []
  for run, seed in enumerate(seeds):
    q, k, mask, valid = queries_keys(runs, run)
    beta = q.shape[-1] ** -0.5 if beta is None else beta
    layers = [layer_wells(q[n], k[n], mask, valid, beta=beta, tol=tol, max_steps=max_steps)
              for n in range(q.shape[0])]
    per_seed.append(dict(seed=seed, eval={key: float(v) for key, v in evals[run].items()
                                          if isinstance(v, (int, float))}, layers=layers))
  return dict(model=name, preset=MODELS[name], depth=depth, train_steps=steps, beta=beta,
              queries=int(valid.sum()), seeds=per_seed,
              seconds=round(time.perf_counter() - start, 1))


def head_means(record, field):
  """[L, N] (or [L, N, 3]) mean over seeds of one per-head field."""
  return np.mean([[layer[field] for layer in s["layers"]] for s in record["seeds"]], 0)


def plot(records, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.patches
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(records), 3, figsize=(13, 3.3 * len(records)), squeeze=False)
  for row, record in zip(axes, records):
    for ax, field, label in ((row[0], "mean_steps", "updates to ‖Δξ‖ ≤ tol (mean)"),
                             (row[1], "energy_drop", "energy drop E(q) − E(ξ*) (mean)")):
      values = head_means(record, field)
      image = ax.imshow(values, cmap="viridis", aspect="auto")
      fig.colorbar(image, ax=ax, label=label)
      ax.set(xlabel="head", ylabel="layer", title=f"{record['model']}: {label}",
             xticks=range(values.shape[1]), yticks=range(values.shape[0]),
             yticklabels=range(1, values.shape[0] + 1))
    ax, bottom = row[2], None
    start, fixed = (head_means(record, f).mean(1) for f in ("start_wells", "fixed_point_wells"))
    layers = np.arange(1, start.shape[0] + 1)
    for i, well in enumerate(energy.WELL_TYPES):
      for offset, values, hatch in ((-0.2, start, ""), (0.2, fixed, "//")):
        bottom = values[:, :i].sum(1)
        ax.bar(layers + offset, values[:, i], 0.38, bottom=bottom, color=f"C{i}", hatch=hatch,
               edgecolor="k", linewidth=0.3, label=None if hatch else well)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(matplotlib.patches.Patch(facecolor="white", edgecolor="k", hatch="//",
                                            label="hatched: at the fixed point"))
    ax.set(xlabel="layer (left bars: trained attention; right: fixed point)",
           ylabel="fraction of queries", title=f"{record['model']}: well types", xticks=layers)
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(_):
  depth, steps, seeds = FLAGS.depth, FLAGS.train_steps, [int(s) for s in FLAGS.seeds]
  if FLAGS.smoke:
    depth, steps, seeds = 1, 2, [0]
  records = [model_wells(name, depth=depth, steps=steps, seeds=seeds, tol=FLAGS.tol,
                         max_steps=FLAGS.max_steps) for name in MODELS]
  result = dict(description="fixed points of ξ ← Kᵀ softmax(β K ξ) from each query of "
                "trained standard-attention models (mha_jax.energy.converge)",
                tol=FLAGS.tol, max_steps=FLAGS.max_steps, well_types=list(energy.WELL_TYPES),
                well_mass=energy.WELL_MASS, models=records)
  with open(FLAGS.json, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  for r in records:
    print(f"{r['model']}: eval {r['seeds'][0]['eval']}; mean updates per layer "
          f"{np.round(head_means(r, 'mean_steps').mean(1), 2).tolist()}")
  if FLAGS.plot:
    plot(records, FLAGS.plot)


def define_flags():
  """Flags exist only when run as a script (tests import this module)."""
  flags.DEFINE_integer("depth", 4, "layers of each model")
  flags.DEFINE_integer("train_steps", 300, "training steps of each model")
  flags.DEFINE_list("seeds", ["0", "1"], "one model per seed (trained together, vmapped)")
  flags.DEFINE_float("tol", 1e-4, "stop a query when ‖Δξ‖ ≤ tol")
  flags.DEFINE_integer("max_steps", 100, "at most this many updates")
  flags.DEFINE_bool("smoke", False, "depth 1, 2 training steps, one seed")
  flags.DEFINE_string("json", "context_wells.json", "where the results go")
  flags.DEFINE_string("plot", None, "PNG: updates, energy drop and well types per layer/head")


if __name__ == "__main__":
  define_flags()
  app.run(main)
