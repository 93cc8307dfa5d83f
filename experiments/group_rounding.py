"""How far rounding alone moves a vmapped run: one setting trained in groups of
different composition (alone, with other α / α′ beside it, in another position).

    nice python experiments/group_rounding.py --out=sweeps/group_rounding/rounding.json

The run of interest (X) has the same seed, data order, init, α and α′ in every
group, so any difference in its result comes from the floating-point rounding of
the compiled vmapped step, which depends on the group's shape: the
number that tells how much of a sweep's seed spread is rounding. Writes a JSON
artefact {setting, groups: [{mates, position, K, accuracy, final_train_loss,
first_differing_step, max_param_diff}], spread}: the spread is over groups, per
seed, of X's final accuracy.
"""

import hashlib
import json
import os
import time

from absl import app, flags
import jax
import numpy as np

from mha_jax.sweep import grid, vmapped
from mha_jax.train import config_util

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "vit_depth", "the sweep preset whose base training config is used")
flags.DEFINE_list("seeds", ["2", "0"], "seeds of the run of interest")
flags.DEFINE_float("alpha", 0.5, "α of the run of interest (α′ = α, the convex residual)")
flags.DEFINE_integer("depth", 6, "its depth")
flags.DEFINE_integer("steps", 0, "training steps (0: the preset's full schedule)")
flags.DEFINE_string("out", "sweeps/group_rounding/rounding.json", "the JSON artefact")

# Mates (α, α′) beside X: as in vit_depth (α = α′ = 0.7) and in alpha_grid (others).
MATES = [(), ((0.7, 0.7),), ((0.2, 1.0),), ((0.7, 0.7), (0.2, 1.0), (0.8, 0.0))]


def train_group(base, cells, steps):
  config = grid.cell_config(base, cells[0])
  config.total_steps = steps
  settings = [vmapped.RunSetting(c["seed"], c["alpha"], c["alpha_hidden"]) for c in cells]
  group = vmapped.VmappedGroup(config, settings)
  losses_SxK = group.train(steps)
  evals = group.evaluate(-1)
  return losses_SxK, evals, group.states["params"]


def digest(params):
  """A short hash of the bytes of every parameter: equal digests = bitwise-equal runs."""
  sha = hashlib.sha1()
  for leaf in jax.tree.leaves(params):
    sha.update(np.ascontiguousarray(leaf).tobytes())
  return sha.hexdigest()[:12]


def measure_seed(base, seed, steps):
  """X's results in each group composition, against X trained alone."""
  x = dict(kind="hopfield", alpha=FLAGS.alpha, alpha_hidden=FLAGS.alpha, residual="convex",
           h0="zeros", reset_every=0, depth=FLAGS.depth, seed=seed)
  out, alone = [], None
  for i, mates in enumerate(MATES):
    for position in ((0, len(mates)) if i == 1 else (0,)):
      cells = [dict(x, alpha=a, alpha_hidden=h) for a, h in mates]
      cells.insert(position, x)
      start = time.perf_counter()
      losses_SxK, evals, params = train_group(base, cells, steps)
      x_params = jax.tree.map(lambda p, k=position: np.asarray(p[k]), params)
      x_losses = losses_SxK[:, position]
      if alone is None:
        alone = (x_losses, x_params)
      differs = np.nonzero(x_losses != alone[0])[0]
      param_diff = max(float(np.abs(a - b).max()) for a, b in zip(
          jax.tree.leaves(x_params), jax.tree.leaves(alone[1])))
      out.append(dict(seed=seed, mates=[list(m) for m in mates], position=position,
                      K=len(cells), accuracy=float(evals[position]["accuracy"]),
                      final_train_loss=float(x_losses[-1]),
                      first_differing_step=int(differs[0]) + 1 if differs.size else None,
                      max_param_diff=param_diff, params_digest=digest(x_params),
                      seconds=time.perf_counter() - start))
      print(json.dumps(out[-1]), flush=True)
  return out


def main(_):
  sweep = config_util.load_config(f"configs/sweep.py:preset={FLAGS.preset}")
  base = grid.base_config(sweep)
  steps = FLAGS.steps or int(base.total_steps)
  groups = [g for s in FLAGS.seeds for g in measure_seed(base, int(s), steps)]
  spread = {}
  for seed in sorted({g["seed"] for g in groups}):
    acc = [g["accuracy"] for g in groups if g["seed"] == seed]
    spread[str(seed)] = dict(min=min(acc), max=max(acc), range=max(acc) - min(acc),
                             std=float(np.std(acc, ddof=1)))
  result = dict(preset=FLAGS.preset, steps=steps, alpha=FLAGS.alpha, alpha_hidden=FLAGS.alpha,
                residual="convex", depth=FLAGS.depth, optim=base.optim.to_dict(),
                groups=groups, spread=spread)
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(spread, indent=1))
  print("saved", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
