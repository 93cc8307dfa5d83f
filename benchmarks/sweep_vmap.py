"""What the vmapped sweep buys: K runs of one small model in one compiled step vs
the same K runs one after another, side by side in one process.

    python benchmarks/sweep_vmap.py --runs=8 --steps=30

Both sides use the train package's `train_step` on the same config (the digits
ViT of configs/sweep.py, MHA with per-run α′) and the same per-run batches; each
is compiled and warmed up first, then timed over `--steps` steps (median of
`--repeats`). Prints seconds per K-run step for both and the speed-up.
"""

import functools
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from mha_jax.sweep import vmapped
from mha_jax.train import config_util

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 8, "K: runs in the sweep")
flags.DEFINE_integer("steps", 30, "timed steps per repeat")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported)")
flags.DEFINE_integer("depth", 6, "layers")
flags.DEFINE_integer("batch_size", 64, "per-run batch")


def config():
  sweep = config_util.load_config("configs/sweep.py:preset=alpha_grid")
  base = config_util.load_config(sweep.base)
  base.update(batch_size=FLAGS.batch_size, total_steps=1000)
  base.model.num_layers = FLAGS.depth
  base.model.attention.update(kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  return base


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(_):
  settings = [vmapped.RunSetting(k, 0.5, k / max(FLAGS.runs - 1, 1)) for k in range(FLAGS.runs)]
  group = vmapped.VmappedGroup(config(), settings)
  batches = group.next_batches()
  sequential_step = jax.jit(functools.partial(
      vmapped.sweep_train_step, model=group.model, scope=group.scope, tx=group.tx,
      task=group.task), donate_argnums=(0,))
  one = lambda a, k: jax.tree.map(lambda x: x[k:k + 1], a)  # noqa: E731
  per_run = [(one(group.states, k), one(batches, k), one(group.overrides, k))
             for k in range(FLAGS.runs)]

  def vmapped_steps():
    states = jax.tree.map(jnp.copy, group.states)   # the step donates its input
    for _ in range(FLAGS.steps):
      states, _ = group.train_fn(states, batches, group.overrides)
    return states

  def sequential_steps():
    out = []
    for state, batch, overrides in per_run:
      state = jax.tree.map(jnp.copy, state)
      for _ in range(FLAGS.steps):
        state, _ = sequential_step(state, batch, overrides)
      out.append(state)
    return out

  vmapped_steps(), sequential_steps()   # compile and warm up
  t_vmap = timed(vmapped_steps, FLAGS.repeats) / FLAGS.steps
  t_seq = timed(sequential_steps, FLAGS.repeats) / FLAGS.steps
  print(f"K={FLAGS.runs} runs, depth {FLAGS.depth}, batch {FLAGS.batch_size} per run, "
        f"{jax.devices()[0].platform}")
  print(f"vmapped:    {t_vmap * 1e3:8.1f} ms per step of all K runs")
  print(f"one by one: {t_seq * 1e3:8.1f} ms per step of all K runs")
  print(f"speed-up:   {t_seq / t_vmap:8.2f}×")


if __name__ == "__main__":
  app.run(main)
