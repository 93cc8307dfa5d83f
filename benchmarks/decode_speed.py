"""Decoding speed: the K/V cache vs recomputing the full forward, side by side.

For each attention kind it builds one GPT-2 or LLaMA stack with random weights
and times greedy generation of --new_tokens tokens after a --prompt_len prompt
two ways, both jitted end to end (`lax.scan` over the new tokens):

- cached (`mha_jax.decode.generate`): prefill, then one token per step against
  the fixed-size K/V cache; MHA rebuilds each new row of H from the cached keys;
- recompute (`mha_jax.decode.generate_uncached`): every step runs the full
  forward over the fixed [B, prompt + new] buffer, which is what a jitted
  generator without a cache does (a growing-prefix recompute would do about half
  that work, but recompiles at every length).

It prints new tokens per second for both, their ratio, and whether the greedy
tokens agree, and writes the rows as JSON (--json_out). The target (issue 11) is a ratio
≥ 10 at 512 generated tokens.

    python benchmarks/decode_speed.py --json_out=decode_speed.json   # GPT-2-style, 512 new
    python benchmarks/decode_speed.py --model=llama --kinds=standard,hopfield
    python benchmarks/decode_speed.py --quick           # CI: tiny model, 8 tokens
"""

import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import _common
from mha_jax import decode
from mha_jax.models import build_model

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "gpt2", ["gpt2", "llama"], "model family")
flags.DEFINE_list("kinds", ["standard", "hopfield"], "attention kinds to compare")
flags.DEFINE_integer("layers", 4, "depth")
flags.DEFINE_integer("width", 384, "model width")
flags.DEFINE_integer("heads", 6, "attention heads")
flags.DEFINE_integer("vocab", 50257, "vocabulary size")
flags.DEFINE_integer("batch", 1, "sequences decoded together")
flags.DEFINE_integer("prompt_len", 16, "prompt tokens")
flags.DEFINE_integer("new_tokens", 512, "generated tokens")
flags.DEFINE_integer("repeats", 1, "timed runs of each generator (compiled ahead of time)")

QUICK = dict(layers=2, width=64, heads=4, vocab=97, batch=2, prompt_len=4, new_tokens=8,
             repeats=1)


def settings():
  names = ("layers", "width", "heads", "vocab", "batch", "prompt_len", "new_tokens", "repeats")
  values = {name: getattr(FLAGS, name) for name in names}
  return {**values, **QUICK} if FLAGS.quick else values


def timed(run, repeats):
  """(median seconds of `repeats` calls of a compiled generator, its tokens)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tokens, _ = run()
    jax.block_until_ready(tokens)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), np.asarray(tokens)


def measure(kind, s):
  total = s["prompt_len"] + s["new_tokens"]
  model = build_model(FLAGS.model, num_layers=s["layers"], width=s["width"],
                      num_heads=s["heads"], mlp_dim=4 * s["width"], vocab_size=s["vocab"],
                      max_len=total, attention={"kind": kind})
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  prompt = jax.random.randint(jax.random.key(1), (s["batch"], s["prompt_len"]), 0, s["vocab"])
  seconds, tokens = {}, {}
  for cached in (True, False):
    run = decode.compiled_generator(model, params, prompt, max_new_tokens=s["new_tokens"],
                                    cached=cached)
    seconds[cached], tokens[cached] = timed(run, s["repeats"])
  new = s["batch"] * s["new_tokens"]
  return {"model": FLAGS.model, "kind": kind, **s, "cached_tokens_per_s": new / seconds[True],
          "recompute_tokens_per_s": new / seconds[False],
          "speedup": seconds[False] / seconds[True],
          "tokens_equal": bool(np.array_equal(tokens[True], tokens[False])),
          "cached_tokens_shape": list(tokens[True].shape)}


def main(_):
  s = settings()
  print(f"device={jax.devices()[0].platform} model={FLAGS.model} L={s['layers']} "
        f"D={s['width']} heads={s['heads']} B={s['batch']} prompt={s['prompt_len']} "
        f"new={s['new_tokens']} float32, greedy; median of {s['repeats']}")
  print(f"{'kind':>10} {'cached tok/s':>13} {'recompute tok/s':>16} {'speed-up':>9} {'same tokens':>12}")
  rows = []
  for kind in FLAGS.kinds:
    row = measure(kind, s)
    rows.append(row)
    print(f"{kind:>10} {row['cached_tokens_per_s']:13.1f} {row['recompute_tokens_per_s']:16.1f} "
          f"{row['speedup']:8.1f}x {str(row['tokens_equal']):>12}", flush=True)
  _common.write_json({"benchmark": "decode_speed", "device": jax.devices()[0].platform,
                      "rows": rows})


if __name__ == "__main__":
  app.run(main)
