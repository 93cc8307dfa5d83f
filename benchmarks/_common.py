"""What every benchmark shares: the --quick/--json_out interface, timing, memory
readings (XLA's memory analysis, process RSS) and the same-run matmul peak.

Files starting with "_" are helpers, not benchmarks: run_all.py skips them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import sys
import threading
import time

from absl import flags

flags.DEFINE_bool("quick", False, "tiny shapes, one repeat: checks the output, not speed (CI)")
flags.DEFINE_string("json_out", None, "write the results as JSON to this path")
FLAGS = flags.FLAGS
MIB = 2 ** 20
ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_json(results):
  """Write {"rows": [...], ..., "provenance": {...}} to --json_out."""
  if FLAGS.json_out:
    path = pathlib.Path(FLAGS.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {**results, "provenance": provenance()}
    path.write_text(json.dumps(results, indent=1, default=float))


def provenance():
  """What a reader needs to weigh a figure: the command, the machine, its load then
  (2 shared cores make times move with the load), the library versions, the date."""
  versions = {}
  for name in ("jax", "jaxlib", "flax", "torch", "libtpu"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
  return {"command": " ".join(["python", script, *sys.argv[1:]]), "cpu": cpu_model(),
          "cpus": os.cpu_count(), "load_average": os.getloadavg(), "versions": versions,
          "python": platform.python_version(),
          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def print_table(rows, columns):
  """rows: dicts; columns: (key, header, format) triples."""
  print(" | ".join(header for _, header, _ in columns))
  for row in rows:
    print(" | ".join(("-" if row.get(key) is None else fmt.format(row[key]))
                     for key, _, fmt in columns))


def current_rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
  """Samples the process RSS every millisecond while active: peak − RSS at entry."""

  def __enter__(self):
    self.base = self.peak = current_rss()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def _sample(self):
    while not self._stop.wait(0.001):
      self.peak = max(self.peak, current_rss())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, current_rss())
    self.delta = self.peak - self.base


def max_rss():
  """Peak RSS of this process so far (bytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_time(fn, repeats, block):
  """Median wall time of fn() over `repeats` calls after one warm-up."""
  block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def matmul_peak(size, repeats):
  """FLOP/s of a jitted float32 [size×size]·[size×size] matmul on this machine, now."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  seconds = median_time(lambda: matmul(a), repeats, jax.block_until_ready)
  return 2 * size ** 3 / seconds


def memory_row(compiled):
  """XLA's per-device memory analysis of a compiled step, in MiB."""
  stats = compiled.memory_analysis()
  return {"temp_mib": stats.temp_size_in_bytes / MIB,
          "argument_mib": stats.argument_size_in_bytes / MIB,
          "output_mib": stats.output_size_in_bytes / MIB}


def flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def compiled_steps(model, inputs, labels):
  """(train step, forward, params, optimizer state) of a Flax model returning
  (logits, ...): AdamW on the cross-entropy, compiled for these inputs."""
  import flax.linen as nn
  import jax
  import optax
  params = nn.unbox(jax.jit(model.init)(jax.random.key(1), inputs)["params"])
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)

  def loss_fn(params):
    logits = model.apply({"params": params}, inputs)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
  forward = jax.jit(lambda p: model.apply({"params": p}, inputs)[0]).lower(params).compile()
  return step, forward, params, opt_state


def compiled_lm_gradient(mesh, model, length, batch):
  """The loss gradient of a language model on a batch-sharded global batch of
  [batch, length] tokens, parameters replicated, lowered for `mesh` and compiled
  (for TPU topologies: libtpu on this host)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from mha_jax.train import sharding
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32,
                                sharding=NamedSharding(mesh, P(sharding.BATCH_AXES)))
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros(
      (1, length), jnp.int32))["params"]))
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype,
                                                       sharding=NamedSharding(mesh, P())), params)

  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens)[0]
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  with sharding.step_context(mesh, sharding.DEFAULT_RULES):
    return jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
