"""Cost of the hidden state: MHA vs standard attention, measured side by side.

For a GPT-style stack it compiles one forward+backward step per (attention kind,
sequence length, remat policy), reads XLA's temp-buffer size (the activation
memory the step needs) and times the step, then prints MHA/standard ratios.
Spec §5 predicts extra memory of B·heads·T² floats per layer (the carried H) and
O(T²) extra elementwise work per layer.

    python benchmarks/attention_cost.py                       # CPU-sized defaults
    python benchmarks/attention_cost.py --lengths=512,1024,2048 --batch=8 --width=768 --heads=12
    # GPT-2 small's shape, memory only (compiles, runs nothing):
    python benchmarks/attention_cost.py --lengths=1024 --batch=8 --layers=12 --width=768 \
        --heads=12 --repeats=0
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402
from mha_jax.models import layers, stack_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["128", "256"], "sequence lengths T")
flags.DEFINE_list("remat", ["none", "full"], "remat policies to compare")
flags.DEFINE_integer("batch", 4, "batch size")
flags.DEFINE_integer("layers", 6, "depth")
flags.DEFINE_integer("width", 256, "model width")
flags.DEFINE_integer("heads", 4, "attention heads")
flags.DEFINE_integer("repeats", 3, "timed steps (after one warm-up); 0: memory only")
flags.DEFINE_string("dtype", "float32", "compute dtype")


def compiled_step(kind, length, remat):
  cfg = stack_config.StackConfig(num_layers=FLAGS.layers, width=FLAGS.width, num_heads=FLAGS.heads,
                           mlp_dim=4 * FLAGS.width, init_std=0.02, dtype=FLAGS.dtype,
                           remat_policy=remat, attention=stack_config.AttentionConfig(kind=kind))
  stack = layers.LayerStack(cfg)
  x = jax.random.normal(jax.random.key(0), (FLAGS.batch, length, FLAGS.width))
  mask = layers.attention.causal_mask(length)
  params = nn.unbox(stack.init(jax.random.key(1), x, mask))["params"]

  def loss(params, x):
    y, _ = stack.apply({"params": params}, x, mask)
    return jnp.mean(y.astype(jnp.float32) ** 2)

  step = jax.jit(jax.grad(loss)).lower(params, x).compile()
  return step, params, x


def measure(kind, length, remat):
  step, params, x = compiled_step(kind, length, remat)
  temp_bytes = step.memory_analysis().temp_size_in_bytes
  if not FLAGS.repeats:   # memory only: plan a large shape without running it
    return temp_bytes, float("nan")
  jax.block_until_ready(step(params, x))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, x))
    times.append(time.perf_counter() - start)
  return temp_bytes, float(np.median(times))


def main(_):
  if FLAGS.quick:
    FLAGS.lengths, FLAGS.batch, FLAGS.layers, FLAGS.width, FLAGS.heads = ["16"], 2, 2, 32, 2
    FLAGS.repeats = 1
  rows = []
  h_bytes = 4 * FLAGS.batch * FLAGS.heads * FLAGS.layers  # × T², float32 H per layer
  print(f"device={jax.devices()[0].platform} B={FLAGS.batch} L={FLAGS.layers} D={FLAGS.width} "
        f"heads={FLAGS.heads} dtype={FLAGS.dtype}; forward+backward, median of {FLAGS.repeats}")
  print(f"{'T':>5} {'remat':>6} {'std ms':>8} {'mha ms':>8} {'time x':>7} "
        f"{'std MiB':>8} {'mha MiB':>8} {'mem x':>6} {'L·B·N·T² MiB':>13}")
  for length in map(int, FLAGS.lengths):
    for remat in FLAGS.remat:
      std_mem, std_t = measure("standard", length, remat)
      mha_mem, mha_t = measure("hopfield", length, remat)
      print(f"{length:5d} {remat:>6} {1e3 * std_t:8.1f} {1e3 * mha_t:8.1f} {mha_t / std_t:7.2f} "
            f"{std_mem / 2**20:8.1f} {mha_mem / 2**20:8.1f} {mha_mem / max(std_mem, 1):6.2f} "
            f"{h_bytes * length ** 2 / 2**20:13.1f}")
      rows.append(dict(length=length, remat=remat, standard_s=std_t, mha_s=mha_t,
                       time_ratio=mha_t / std_t, standard_temp_mib=std_mem / 2**20,
                       mha_temp_mib=mha_mem / 2**20, memory_ratio=mha_mem / max(std_mem, 1),
                       h_mib=h_bytes * length ** 2 / 2**20))
  _common.write_json({"shape": dict(batch=FLAGS.batch, layers=FLAGS.layers, width=FLAGS.width,
                                    heads=FLAGS.heads, dtype=FLAGS.dtype), "rows": rows})


if __name__ == "__main__":
  app.run(main)
