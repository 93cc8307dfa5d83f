"""TPU ahead-of-time compile (no TPU needed): per-device memory and a roofline
step time for GPT-2 small, standard attention vs MHA implementations.

libtpu compiles for a v5e:2x2 slice (4 chips) from this CPU host
(jax.experimental.topologies); the batch is split over the 4 chips. Per
configuration it reads `memory_analysis()` (argument + output + temp bytes per
device) and `cost_analysis()` (FLOPs and bytes accessed per device), and turns
the latter into a roofline time, max(FLOPs / peak, bytes / HBM bandwidth), with
v5e's 197 TFLOP/s (bf16) and 819 GB/s.

Two tables: the whole train step (value and gradient of the LM loss, bf16
compute, full remat), and one attention layer forward+backward where standard
attention is the Pallas flash kernel — the fair memory baseline — next to
factorised MHA on the same flash kernel over stacked features (V zero-padded to
W·D, W = 4 and 12 layers) and the fused MHA kernel (which reads H_{n−1} and
writes H_n, both float32 here).

    python benchmarks/tpu_aot.py                 # GPT-2 small, T = 1024 and 4096
    python benchmarks/tpu_aot.py --quick         # CI: a 2-layer model at T = 256

A whole-model compile that XLA:TPU refuses for memory is a result ("refused_rows"
in the JSON); any other compile error is recorded under "errors" and fails the
script (exit status 1) once the tables are written.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")   # quiets a libtpu warning
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")        # other processes may hold it
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import _common  # noqa: E402
from mha_jax import attention  # noqa: E402
from mha_jax.kernels import fused  # noqa: E402
from mha_jax.models import gpt  # noqa: E402
from mha_jax.train import sharding  # noqa: E402

flags.DEFINE_list("lengths", ["1024", "4096"], "sequence lengths")
flags.DEFINE_integer("batch", 8, "global batch (split over the 4 chips)")
flags.DEFINE_list("implementations", ["standard_xla", "naive", "factorized", "fused"],
                  "whole-model rows: standard_xla = jax.nn.dot_product_attention")
FLAGS = flags.FLAGS
PEAK_FLOPS, HBM_BYTES_PER_S = 197e12, 819e9
HEADS, HEAD_DIM = 12, 64


def tpu_mesh():
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2",
                                      chip_config_name="default", chips_per_host_bounds=(2, 2, 1),
                                      num_slices=1)
  return sharding.make_mesh(dict(data=4, fsdp=1, tensor=1), list(topo.devices))


def report(compiled, **row):
  flops, bytes_accessed = _common.flops(compiled)
  row.update(_common.memory_row(compiled), flops=flops, bytes=bytes_accessed,
             roofline_ms=1e3 * max(flops / PEAK_FLOPS, bytes_accessed / HBM_BYTES_PER_S))
  row["per_device_mib"] = row["temp_mib"] + row["argument_mib"] + row["output_mib"]
  print(row, flush=True)
  return row


def model_step(mesh, length, implementation):
  """The GPT-2 small loss gradient, lowered for the TPU mesh and compiled."""
  if implementation == "standard_xla":
    att = dict(kind="standard", implementation="xla")
  else:
    att = dict(kind="hopfield", alpha=0.5, alpha_hidden=0.5, implementation=implementation)
  size = dict(num_layers=2, width=128, num_heads=2, vocab_size=512) if FLAGS.quick else {}
  model = gpt.create("small", max_len=length, dtype="bfloat16", remat_policy="full",
                     attention=att, **size)
  return _common.compiled_lm_gradient(mesh, model, length, FLAGS.batch)


def attention_layer(mesh, length, kind, slots=1):
  """One attention layer, forward + backward, per chip inside shard_map."""
  d = HEAD_DIM * slots
  spec = P(sharding.BATCH_AXES)

  def per_shard(q, k, v, *h):
    if kind == "fused_mha":
      out, h_next = fused.fused_hopfield_attention(
          q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), h[0], alpha_hidden=0.5,
          mask=attention.causal_mask(length), interpret=False)
      return jnp.sum(out.astype(jnp.float32)) + jnp.sum(h_next)
    v_wide = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, d - HEAD_DIM)))
    out = pallas_flash.flash_attention(q, k, v_wide, causal=True, sm_scale=1.0)
    return jnp.sum(out[..., :HEAD_DIM].astype(jnp.float32))

  def loss(*args):
    return jax.shard_map(lambda *s: jax.lax.psum(per_shard(*s), sharding.BATCH_AXES),
                         mesh=mesh, in_specs=(spec,) * len(args), out_specs=P(),
                         check_vma=False)(*args)

  def struct(last, dtype):
    return jax.ShapeDtypeStruct((FLAGS.batch, HEADS, length, last), dtype,
                                sharding=NamedSharding(mesh, spec))

  args = [struct(d, jnp.bfloat16), struct(d, jnp.bfloat16), struct(HEAD_DIM, jnp.bfloat16)]
  if kind == "fused_mha":
    args.append(struct(length, jnp.float32))
  grad = jax.grad(loss, argnums=tuple(range(len(args))))
  return jax.jit(grad).lower(*args).compile()


def is_out_of_memory(message):
  """XLA:TPU's refusal of a program that exceeds HBM (a result: it does not fit)."""
  return any(sign in message for sign in ("RESOURCE_EXHAUSTED", "Ran out of memory",
                                          "required for HLO temporaries"))


def add_ratios(rows, baseline_key):
  """× the baseline at the same length; None where the baseline did not compile."""
  for row in rows:
    base = next((r for r in rows if r["length"] == row["length"] and r["kind"] == baseline_key),
                None)
    if base is None:
      row["per_device_x"] = row["roofline_x"] = None
    else:
      row["per_device_x"] = row["per_device_mib"] / base["per_device_mib"]
      row["roofline_x"] = row["roofline_ms"] / base["roofline_ms"]


COLUMNS = [("length", "T", "{}"), ("kind", "attention", "{}"),
           ("per_device_mib", "MiB/device", "{:.0f}"), ("per_device_x", "mem ×", "{:.2f}"),
           ("temp_mib", "temp MiB", "{:.0f}"), ("flops", "FLOPs", "{:.3g}"),
           ("bytes", "bytes", "{:.3g}"), ("roofline_ms", "roofline ms", "{:.2f}"),
           ("roofline_x", "time ×", "{:.2f}")]


def main(argv):
  del argv
  if FLAGS.quick:
    FLAGS.lengths, FLAGS.batch = ["256"], 4
  mesh = tpu_mesh()
  model_rows, layer_rows = [], []
  refused, errors = [], []
  for length in map(int, FLAGS.lengths):
    for implementation in FLAGS.implementations:
      try:
        model_rows.append(report(model_step(mesh, length, implementation), length=length,
                                 kind=implementation))
      except Exception as e:  # noqa: BLE001 — sorted below: a refusal is a result, else a failure
        row = dict(length=length, kind=implementation, error=str(e).strip()[:2000])
        (refused if is_out_of_memory(row["error"]) else errors).append(row)
        print(f"T={length} {implementation}: compile failed: {row['error'].splitlines()[0]}")
    layers = [("standard_flash", 1), ("factorized_flash_W4", 4), ("factorized_flash_W12", 12),
              ("fused_mha", 1)]
    for kind, slots in layers[:2] + layers[3:] if FLAGS.quick else layers:
      layer_rows.append(report(attention_layer(mesh, length, kind, slots), length=length,
                               kind=kind))
  add_ratios(model_rows, "standard_xla")
  add_ratios(layer_rows, "standard_flash")
  print("\nGPT-2 small train step (loss gradient), v5e:2x2, per device")
  _common.print_table(model_rows, COLUMNS)
  print("\nOne attention layer fwd+bwd (B, 12 heads, d=64, bf16), v5e:2x2, per device")
  _common.print_table(layer_rows, COLUMNS)
  _common.write_json({"model_rows": model_rows, "layer_rows": layer_rows,
                      "refused_rows": refused, "errors": errors,
                      "peak_flops": PEAK_FLOPS, "hbm_bytes_per_s": HBM_BYTES_PER_S})
  if errors:
    raise SystemExit(f"{len(errors)} whole-model compiles failed for a reason other than "
                     f"memory: {[(e['length'], e['kind']) for e in errors]}")


if __name__ == "__main__":
  app.run(main)
