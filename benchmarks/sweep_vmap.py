"""What the vmapped sweep buys: K runs of one small model in one compiled step vs
the same K runs one after another, side by side in one process.

    python benchmarks/sweep_vmap.py --runs=8 --steps=30
    python benchmarks/sweep_vmap.py --quick     # CI: 2 runs of a 1-layer model, 2 steps

Both sides use the train package's `train_step` on the same config (the digits
ViT of configs/sweep.py, MHA with per-run α′) and the same per-run batches; each
is compiled and warmed up first, then timed over `--steps` steps (median of
`--repeats`). Prints seconds per K-run step for both and the speed-up, and writes
them as one JSON row (--json_out); the two sides' final parameters must agree
(max_param_diff), or the timing compares different work.
"""

import functools
import pathlib
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp

import _common
from mha_jax.sweep import vmapped
from mha_jax import config_util

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 8, "K: runs in the sweep")
flags.DEFINE_integer("steps", 30, "timed steps per repeat")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported)")
flags.DEFINE_integer("depth", 6, "layers")
flags.DEFINE_integer("batch_size", 64, "per-run batch")
ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = dict(runs=2, steps=2, repeats=1, depth=1, batch_size=8)


def settings():
  names = ("runs", "steps", "repeats", "depth", "batch_size")
  values = {name: getattr(FLAGS, name) for name in names}
  return {**values, **QUICK} if FLAGS.quick else values


def config(s):
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset=alpha_grid")
  base = config_util.load_config(str(ROOT / sweep.base))
  base.update(batch_size=s["batch_size"], total_steps=1000)
  base.model.num_layers = s["depth"]
  base.model.attention.update(kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  return base


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def max_state_difference(vmapped_states, sequential_states):
  """Largest |difference| between run k's float leaves on the two sides."""
  stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *sequential_states)
  return max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(vmapped_states), jax.tree.leaves(stacked))
             if jnp.issubdtype(a.dtype, jnp.floating))


def main(_):
  s = settings()
  runs = [vmapped.RunSetting(k, 0.5, k / max(s["runs"] - 1, 1)) for k in range(s["runs"])]
  group = vmapped.VmappedGroup(config(s), runs)
  batches = group.next_batches()
  sequential_step = jax.jit(functools.partial(
      vmapped.sweep_train_step, model=group.model, scope=group.scope, tx=group.tx,
      task=group.task), donate_argnums=(0,))
  one = lambda a, k: jax.tree.map(lambda x: x[k:k + 1], a)  # noqa: E731
  per_run = [(one(group.states, k), one(batches, k), one(group.overrides, k))
             for k in range(s["runs"])]

  def vmapped_steps():
    states = jax.tree.map(jnp.copy, group.states)   # the step donates its input
    for _ in range(s["steps"]):
      states, _ = group.train_fn(states, batches, group.overrides)
    return states

  def sequential_steps():
    out = []
    for state, batch, overrides in per_run:
      state = jax.tree.map(jnp.copy, state)
      for _ in range(s["steps"]):
        state, _ = sequential_step(state, batch, overrides)
      out.append(state)
    return out

  difference = max_state_difference(vmapped_steps(), sequential_steps())  # also warms up
  t_vmap = timed(vmapped_steps, s["repeats"]) / s["steps"]
  t_seq = timed(sequential_steps, s["repeats"]) / s["steps"]
  print(f"K={s['runs']} runs, depth {s['depth']}, batch {s['batch_size']} per run, "
        f"{jax.devices()[0].platform}")
  print(f"vmapped:    {t_vmap * 1e3:8.1f} ms per step of all K runs")
  print(f"one by one: {t_seq * 1e3:8.1f} ms per step of all K runs")
  print(f"speed-up:   {t_seq / t_vmap:8.2f}×   (final states differ by ≤ {difference:.2g})")
  _common.write_json({"rows": [{**s, "vmapped_s": t_vmap, "sequential_s": t_seq,
                                "speedup": t_seq / t_vmap, "max_param_diff": difference,
                                "device": jax.devices()[0].platform}]})


if __name__ == "__main__":
  app.run(main)
