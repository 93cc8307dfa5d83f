"""This codebase's train step vs the PyTorch models of mha_jax.interop.torch_models
(eager and torch.compile): same model, batch and dtype, each framework timed in
its own process (in one process the first JAX step after a torch step ran
1.4–1.8 s slow).

GPT-2-small width with --layers layers, batch --batch × T --length, float32,
AdamW on the LM cross-entropy, standard attention and MHA (materialised H in
both frameworks). Prints JAX time / PyTorch time per attention kind.

    python benchmarks/torch_vs_jax.py
    python benchmarks/torch_vs_jax.py --quick     # CI: tiny model, output shape
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import _common  # noqa: E402

flags.DEFINE_enum("framework", "both", ["both", "jax", "torch", "torch_compile"],
                  "both: run each framework in a child process and compare")
flags.DEFINE_integer("layers", 4, "depth")
flags.DEFINE_integer("batch", 8, "batch")
flags.DEFINE_integer("length", 256, "sequence length")
flags.DEFINE_integer("repeats", 5, "timed steps after warm-up")
FLAGS = flags.FLAGS
KINDS = ("standard", "hopfield")


def shape():
  if FLAGS.quick:
    return dict(num_layers=2, width=64, num_heads=4, mlp_dim=128, vocab_size=256), 2, 16
  return (dict(num_layers=FLAGS.layers, width=768, num_heads=12, mlp_dim=3072, vocab_size=50257),
          FLAGS.batch, FLAGS.length)


def time_jax(kind):
  import jax
  from mha_jax.models import gpt
  size, batch, length = shape()
  att = dict(kind=kind, alpha=0.5, alpha_hidden=0.5)
  model = gpt.create("small", max_len=length, attention=att, **size)
  tokens = jax.random.randint(jax.random.key(0), (batch, length + 1), 0, size["vocab_size"])
  step, _, params, opt_state = _common.compiled_steps(model, tokens[:, :-1], tokens[:, 1:])
  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(*state)
    return loss
  return _common.median_time(run, FLAGS.repeats, jax.block_until_ready)


def time_torch(kind, compiled):
  import torch
  from mha_jax.interop import torch_models, torch_reference
  size, batch, length = shape()
  torch.manual_seed(0)
  model = torch_models.GPT2(size["num_layers"], size["width"], size["num_heads"], size["mlp_dim"],
                            size["vocab_size"], length,
                            torch_reference.Attention(kind=kind, alpha=0.5, alpha_hidden=0.5))
  model.train()
  forward = torch.compile(model) if compiled else model
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  tokens = torch.randint(0, size["vocab_size"], (batch, length + 1))

  def run():
    opt.zero_grad(set_to_none=True)
    logits = forward(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             tokens[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    return loss
  run()   # torch.compile compiles here; median_time adds its own warm-up
  return _common.median_time(run, FLAGS.repeats, lambda loss: loss.item())


def child(framework):
  times = {}
  for kind in KINDS:
    if framework == "jax":
      times[kind] = time_jax(kind)
    else:
      times[kind] = time_torch(kind, compiled=framework == "torch_compile")
  return times


def main(argv):
  del argv
  if FLAGS.quick:
    FLAGS.repeats = 1
  if FLAGS.framework != "both":
    _common.write_json(child(FLAGS.framework))
    return
  times = {}
  with tempfile.TemporaryDirectory() as tmp:
    for framework in ("jax", "torch", "torch_compile"):
      out = os.path.join(tmp, f"{framework}.json")
      args = [sys.executable, os.path.abspath(__file__), f"--framework={framework}",
              f"--json_out={out}", f"--layers={FLAGS.layers}", f"--batch={FLAGS.batch}",
              f"--length={FLAGS.length}", f"--repeats={FLAGS.repeats}"]
      subprocess.run(args + (["--quick"] if FLAGS.quick else []), check=True)
      with open(out) as f:
        times[framework] = json.load(f)
  rows = [dict(kind=kind, jax_s=times["jax"][kind], torch_eager_s=times["torch"][kind],
               torch_compile_s=times["torch_compile"][kind],
               jax_over_eager=times["jax"][kind] / times["torch"][kind],
               jax_over_compile=times["jax"][kind] / times["torch_compile"][kind])
          for kind in KINDS]
  _common.print_table(rows, [("kind", "attention", "{}"), ("jax_s", "JAX s", "{:.3f}"),
                             ("torch_eager_s", "torch eager s", "{:.3f}"),
                             ("torch_compile_s", "torch.compile s", "{:.3f}"),
                             ("jax_over_eager", "JAX/eager", "{:.2f}"),
                             ("jax_over_compile", "JAX/compile", "{:.2f}")])
  size, batch, length = shape()
  _common.write_json({"shape": dict(size, batch=batch, length=length, dtype="float32"),
                      "rows": rows})


if __name__ == "__main__":
  app.run(main)
