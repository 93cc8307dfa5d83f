"""Token uniformity of trained (or freshly initialised) models (spec §3).

For each run, rebuilds the model from its saved config.json, loads the params of
its latest checkpoint, runs `--batches` batches of the run's own eval split and,
after the chosen layers (1-based; default the middle and the last), measures the
cosine similarity of every token pair of a sequence (padding excluded) and the
relative rank residual ‖X − 1x̄ᵀ‖_{1,∞}/‖X‖_{1,∞} per sequence. Prints one row per
run × layer: mean, median, fraction of pairs above 0.9, pair count, mean rank
residual, and the mean centred cosine (each sequence's mean token subtracted first:
a shared offset alone makes raw cosines high). Every row names the attention kind, α, α′ and the residual form, since
"MHA" without the residual form is not one model.

    python experiments/token_uniformity.py --workdirs=runs/demo_std,runs/demo_mha \\
        --plot=uniformity.png
    python experiments/token_uniformity.py --init_only \\
        --configs='configs/demo.py:attention=standard;configs/demo.py:attention=hopfield'

`--init_only` measures freshly initialised models of the given configs (";"
separates them: config arguments use ","). Higher cosine and lower rank residual
mean more uniform tokens; the table prints them whichever way they point.
"""

import functools
import itertools
import json
import os

from absl import app, flags
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mha_jax import analysis, config_util, script_cli
from mha_jax.train import checkpoint, tasks
from mha_jax.train import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", [], "training workdirs (config.json + checkpoints/)")
flags.DEFINE_string("configs", "", "';'-separated config specs, for --init_only")
flags.DEFINE_bool("init_only", False, "analyse freshly initialised models of --configs")
flags.DEFINE_list("layers", [], "1-based layers to measure; default: middle and last")
flags.DEFINE_integer("batches", 1, "eval batches per run")
flags.DEFINE_integer("batch_size", 0, "eval batch size; 0: the run's eval_batch_size")
flags.DEFINE_string("plot", None, "save violin plots of the pairwise cosines here")


def read_config(workdir):
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def default_layers(depth):
  return sorted({max(depth // 2, 1), depth})


def fresh_params(model, task, seed):
  """The params training would start from (same key as state.setup_state)."""
  boxed = model.init({"params": jax.random.key(seed)}, task.dummy_input(), train=False)
  return nn.unbox(boxed["params"])


def residual_stream(params, batch, *, model, task):
  """x after every layer, [L, B, T, D]."""
  x, kwargs = task.model_inputs(batch)
  _, intermediates = model.apply({"params": params}, x, train=False,
                                 return_intermediates=True, **kwargs)
  return intermediates["residual"]


def valid_tokens(batch, modality, length):
  """[B, T] bools: padded examples (images) and padded tokens (text) are False."""
  mask = np.asarray(batch["mask"]) > 0
  if modality == "image":
    return np.broadcast_to(mask[:, None], (mask.shape[0], length))
  return mask


def rank_residuals(x_BxTxD, valid_BxT):
  """Relative rank residual of each sequence over its valid tokens only."""
  full_B = valid_BxT.all(axis=1)
  parts = [np.asarray(analysis.relative_rank_residual(x_BxTxD[full_B]))]
  for b in np.flatnonzero(~full_B & (valid_BxT.sum(axis=1) > 1)):
    parts.append(np.asarray(analysis.relative_rank_residual(x_BxTxD[b:b + 1, valid_BxT[b]])))
  return np.concatenate(parts)


def measure(name, config, workdir, layers, num_batches, batch_size):
  """Rows {name, label, layer, cosines, rank_residuals} for one run, one per layer;
  params from `workdir`'s latest checkpoint, or fresh ones when it is None."""
  config = ml_collections.ConfigDict(config)
  if batch_size:
    config.eval_batch_size = batch_size
  eval_input = train_lib.make_input(config, train=False)
  info = eval_input.info
  task = tasks.make_task(config, info)
  model = train_lib.make_model(config.model, task)
  params = (checkpoint.load_init_params(workdir, model) if workdir
            else fresh_params(model, task, config.seed))
  depth = model.stack.num_layers
  layers = layers or default_layers(depth)
  if not all(1 <= layer <= depth for layer in layers):
    raise app.UsageError(f"{name}: --layers={layers} outside 1..{depth}")
  forward = jax.jit(functools.partial(residual_stream, model=model, task=task))
  cosines = {layer: [] for layer in layers}
  centred = {layer: [] for layer in layers}
  residuals = {layer: [] for layer in layers}
  for batch in itertools.islice(eval_input, num_batches):
    x_LxBxTxD = np.asarray(forward(params, batch), np.float32)
    valid_BxT = valid_tokens(batch, info.modality, x_LxBxTxD.shape[2])
    for layer in layers:
      cosines[layer].append(analysis.pairwise_token_cosine(x_LxBxTxD[layer - 1], valid_BxT))
      centred[layer].append(analysis.pairwise_token_cosine(x_LxBxTxD[layer - 1], valid_BxT,
                                                           centered=True))
      residuals[layer].append(rank_residuals(x_LxBxTxD[layer - 1], valid_BxT))
  label = model.stack.describe_attention()
  return [dict(name=name, label=label, layer=layer, cosines=np.concatenate(cosines[layer]),
               centred_cosines=np.concatenate(centred[layer]),
               rank_residuals=np.concatenate(residuals[layer])) for layer in layers]


def table(rows):
  name_w = max(len("run"), *(len(row["name"]) for row in rows))
  label_w = max(len(row["label"]) for row in rows)
  lines = [f"{'run':<{name_w}}  {'attention':<{label_w}}  {'layer':>5} {'mean':>7} "
           f"{'median':>7} {'>0.9':>7} {'pairs':>8} {'rank res':>9} {'centred':>8}"]
  for row in rows:
    s = analysis.summarize(row["cosines"])
    lines.append(f"{row['name']:<{name_w}}  {row['label']:<{label_w}}  {row['layer']:>5} "
                 f"{s['mean']:7.4f} {s['median']:7.4f} {s['frac_above_0.9']:7.4f} "
                 f"{s['count']:>8} {row['rank_residuals'].mean():9.4f} "
                 f"{row['centred_cosines'].mean():8.4f}")
  return "\n".join(lines)


def tick_label(row):
  label = row["label"].replace(" residual=", "\nresidual=")
  return f"{row['name']}\n{label}\nlayer {row['layer']}"


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 5))
  ax.violinplot([row["cosines"] for row in rows], showmedians=True)
  ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
  ax.set_xticks(np.arange(1, len(rows) + 1), [tick_label(row) for row in rows], fontsize=7)
  ax.set(ylabel="pairwise token cosine similarity", ylim=(-1, 1),
         title="token uniformity (higher = more uniform)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def runs_from_flags():
  """(name, config, workdir or None) for each run the flags name."""
  if FLAGS.init_only:
    specs = [s.strip() for s in FLAGS.configs.split(";") if s.strip()]
    return [(f"init:{spec.partition(':')[2] or os.path.basename(spec)}",
             config_util.load_config(spec), None) for spec in specs]
  return [(os.path.basename(os.path.normpath(w)),
           read_config(script_cli.check_workdir(w, ("config.json", "checkpoints"))), w)
          for w in FLAGS.workdirs]


def main(argv):
  if argv and len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runs = runs_from_flags()
  if not runs:
    raise app.UsageError("give --workdirs, or --init_only with --configs")
  layers = [int(layer) for layer in FLAGS.layers]
  rows = []
  for name, config, workdir in runs:
    rows += measure(name, config, workdir, layers, FLAGS.batches, FLAGS.batch_size)
  print(table(rows))
  if FLAGS.plot:
    plot(rows, FLAGS.plot)
    print("saved", FLAGS.plot)


script_cli.define_debug_flag()

if __name__ == "__main__":
  app.run(script_cli.guarded(main))
