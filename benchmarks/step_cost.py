"""Train step and forward pass of standard attention vs MHA (naive | factorized |
fused), the cross-layer rivals by kind name (e.g. denseformer, attention_residuals,
which carry every earlier output through the scan, and hyper_connections, which
carries n = 4 residual streams; `hyper_connections_dynamic` is mHC with its per-token
term) and Hopfield-energy heads
(`energy_steps1`, `energy_steps3`: attention.kind="hopfield_energy", softmax, 1 or 3
updates ξ ← Kᵀ softmax(β K ξ) before the readout), side by side in one run: time, XLA's
memory analysis, process RSS, MFU. The energy heads iterate in a `fori_loop`, whose body
XLA's cost analysis counts once: their FLOPs and MFU undercount every update after the
first (the rows say so).

Models: GPT-2-small width (768, 12 heads) with --layers layers at each length T
(batch = max(1, --tokens // T)), and ViT-S/16 at 224² (T = 197) with
--vit_layers layers. Every row is divided by the standard-attention row of the
same model, length and remat policy. MFU = the step's FLOPs (XLA cost analysis)
/ step time / a float32 matmul peak measured at the start of this run.

The fused kernel runs in Pallas interpret mode on CPU (a correctness tool, not
a speed one), so outside --quick it is compiled for its memory analysis only.

    python benchmarks/step_cost.py                      # the full sweep
    python benchmarks/step_cost.py --lengths=256,4096 --remat=full --repeats=2
    python benchmarks/step_cost.py --quick              # CI: shapes of the output
    python benchmarks/step_cost.py --models=gpt2 --lengths=128 --remat=none \
        --implementations=standard,naive,attention_residuals,denseformer,hyper_connections,hyper_connections_dynamic \
        --layers=8 --tokens=256 --repeats=2 --json_out=sweeps/rivals_cost/step_cost.json
    python benchmarks/step_cost.py --models=gpt2 --lengths=256 --remat=full --layers=2 \
        --tokens=512 --implementations=standard,naive,energy_steps1,energy_steps3 \
        --json_out=sweeps/step_cost_energy/step_cost.json   # issue 20 rows
    # the same in reverse order (energy_steps3,energy_steps1,naive,standard) →
    # step_cost_reversed.json: on a loaded shared CPU the time ratios move with the order
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import _common  # noqa: E402
from mha_jax import kinds  # noqa: E402
from mha_jax.models import gpt, vit  # noqa: E402

flags.DEFINE_list("lengths", ["128", "256", "512", "1024", "2048", "4096"], "GPT lengths T")
flags.DEFINE_list("remat", ["none", "full"], "remat policies")
flags.DEFINE_list("implementations", ["standard", "naive", "factorized", "fused",
                                      "energy_steps1", "energy_steps3"],
                  "standard attention, MHA implementations, rival kind names, or "
                  "energy_steps<n> (Hopfield-energy heads with n updates)")
flags.DEFINE_list("models", ["gpt2", "vit_s"], "which models")
flags.DEFINE_integer("layers", 4, "GPT-2-width depth")
flags.DEFINE_integer("vit_layers", 4, "ViT-S depth")
flags.DEFINE_integer("tokens", 2048, "GPT tokens per step (batch = tokens // T)")
flags.DEFINE_integer("vit_batch", 8, "ViT batch")
flags.DEFINE_integer("repeats", 3, "timed steps after a warm-up")
flags.DEFINE_integer("time_up_to", 1 << 30, "longer GPT lengths are compiled for their memory "
                     "analysis only (a T=4096 step takes minutes on a small shared CPU)")
flags.DEFINE_integer("no_remat_up_to", 1024, "remat 'none' rows only up to this T (without "
                     "remat a T=4096 step holds every layer's T×T tensors: GiBs)")
FLAGS = flags.FLAGS
ENERGY = "energy_steps"
DYNAMIC_MHC = "hyper_connections_dynamic"


def attention(implementation):
  if implementation == "standard" or implementation in kinds.names(rival=True):
    return dict(kind=implementation)
  if implementation == DYNAMIC_MHC:
    return dict(kind="hyper_connections", hyper_connections_dynamic=True)
  if implementation.startswith(ENERGY):
    return dict(kind="hopfield_energy", energy_steps=int(implementation[len(ENERGY):]))
  return dict(kind="hopfield", alpha=0.5, alpha_hidden=0.5, implementation=implementation)


def build(model_name, length, remat, implementation):
  """(model, a batch of inputs, labels) at this shape."""
  common = dict(remat_policy=remat, attention=attention(implementation))
  rng = jax.random.key(0)
  if model_name == "gpt2":
    quick = dict(width=64, num_heads=4, mlp_dim=128, vocab_size=256) if FLAGS.quick else {}
    model = gpt.create("small", num_layers=FLAGS.layers, max_len=length, **common, **quick)
    batch = max(1, FLAGS.tokens // length)
    tokens = jax.random.randint(rng, (batch, length), 0, model.vocab_size)
    return model, tokens, tokens
  quick = dict(width=64, num_heads=4, mlp_dim=128, image_size=32) if FLAGS.quick else {}
  model = vit.create("S/16", num_layers=FLAGS.vit_layers, num_classes=1000, **common, **quick)
  images = jax.random.normal(rng, (FLAGS.vit_batch, model.image_size, model.image_size, 3))
  return model, images, jnp.zeros((FLAGS.vit_batch,), jnp.int32)


def measure(model_name, length, remat, implementation, peak):
  model, inputs, labels = build(model_name, length, remat, implementation)
  step, forward, params, opt_state = _common.compiled_steps(model, inputs, labels)
  row = dict(model=model_name, length=inputs.shape[1] if model_name == "gpt2" else
             (model.image_size // model.patch_size) ** 2 + 1, batch=inputs.shape[0],
             remat=remat, implementation=implementation, **_common.memory_row(step))
  row["flops"], _ = _common.flops(step)
  if implementation.startswith(ENERGY) and int(implementation[len(ENERGY):]) > 1:
    row["flops_note"] = "XLA counts the update loop's body once: FLOPs, MFU undercount"
  if (implementation == "fused" and not FLAGS.quick   # interpret mode: memory only
      or model_name == "gpt2" and length > FLAGS.time_up_to):
    return row
  state = [params, opt_state]

  def run_step():
    state[0], state[1], loss = step(*state)
    return loss

  with _common.RssPeak() as rss:
    row["step_s"] = _common.median_time(run_step, FLAGS.repeats, jax.block_until_ready)
  row["forward_s"] = _common.median_time(lambda: forward(state[0]), FLAGS.repeats,
                                         jax.block_until_ready)
  row["rss_peak_mib"] = rss.delta / _common.MIB
  row["mfu"] = row["flops"] / row["step_s"] / peak
  return row


def add_ratios(rows):
  base = {(r["model"], r["length"], r["remat"]): r for r in rows
          if r["implementation"] == "standard"}
  for row in rows:
    ref = base.get((row["model"], row["length"], row["remat"]))
    for key in ("step_s", "forward_s", "temp_mib", "rss_peak_mib"):
      if ref and row.get(key) is not None and ref.get(key):
        row[f"{key}_x"] = row[key] / ref[key]


def main(argv):
  del argv
  if FLAGS.quick:
    FLAGS.lengths, FLAGS.remat, FLAGS.repeats, FLAGS.tokens = ["16"], ["full"], 1, 32
    FLAGS.layers = FLAGS.vit_layers = 2
    FLAGS.vit_batch = 2
  peak = _common.matmul_peak(256 if FLAGS.quick else 2048, FLAGS.repeats)
  print(f"matmul peak (float32, this run): {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for model_name in FLAGS.models:
    lengths = [int(t) for t in FLAGS.lengths] if model_name == "gpt2" else [None]
    for length in lengths:
      for remat in FLAGS.remat:
        if remat == "none" and (length or 0) > FLAGS.no_remat_up_to:
          continue
        for implementation in FLAGS.implementations:
          if FLAGS.quick and model_name != "gpt2" and implementation not in ("standard",
                                                                              "factorized"):
            continue   # CI time: ViT's quick rows check the factorised path only
          rows.append(measure(model_name, length, remat, implementation, peak))
          print(rows[-1], flush=True)
  add_ratios(rows)
  _common.print_table(rows, [
      ("model", "model", "{}"), ("length", "T", "{}"), ("batch", "B", "{}"),
      ("remat", "remat", "{}"), ("implementation", "attention", "{}"),
      ("step_s", "step s", "{:.3f}"), ("step_s_x", "step ×", "{:.2f}"),
      ("forward_s", "fwd s", "{:.3f}"), ("forward_s_x", "fwd ×", "{:.2f}"),
      ("temp_mib", "XLA temp MiB", "{:.0f}"), ("temp_mib_x", "temp ×", "{:.2f}"),
      ("rss_peak_mib", "RSS peak MiB", "{:.0f}"), ("rss_peak_mib_x", "RSS ×", "{:.2f}"),
      ("mfu", "MFU", "{:.0%}")])
  _common.write_json({"matmul_peak_flops": peak, "rows": rows})


if __name__ == "__main__":
  app.run(main)
