"""Rank collapse in attention-only networks (spec §3): standard attention vs MHA.

The setting of Dong et al. (2021) and of the paper's theorem: L single-head
attention layers, no MLP, no skip connection, random weights. Prints the relative
rank residual ‖X − 1x̄ᵀ‖_{1,∞}/‖X‖_{1,∞} after each layer, averaged over seeds,
for each α′ and h0 policy, and optionally saves a plot.

    python experiments/rank_collapse.py --layers=12 --weight_scale=1,2 --plot=rank.png

The theorem's bound concerns H chained from layer 1's scores, i.e. h0=first_scores;
h0=zeros starts from softer attention and can collapse faster in the first layers.
float32 gives a floor near 1e-7.
"""

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import analysis

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 12, "depth of the attention-only network")
flags.DEFINE_integer("tokens", 32, "sequence length T")
flags.DEFINE_integer("width", 64, "model width D")
flags.DEFINE_integer("seeds", 4, "random networks averaged per cell")
flags.DEFINE_list("alpha_hidden", ["0", "0.5", "0.7", "0.9"], "α′ values (0 = standard)")
flags.DEFINE_list("h0", ["zeros", "first_scores"], "hidden-state start policies")
flags.DEFINE_list("weight_scale", ["1", "2"], "weight std × √D; larger = sharper softmax")
flags.DEFINE_string("plot", None, "save a log-scale plot of the residual by layer here")


def residual_by_layer(alpha_hidden, h0, weight_scale):
  run = jax.jit(analysis.attention_only_network, static_argnames=("h0",))
  curves = []
  for seed in range(FLAGS.seeds):
    key_w, key_x = jax.random.split(jax.random.key(seed))
    width = FLAGS.width
    w = weight_scale * jax.random.normal(key_w, (FLAGS.layers, 3, width, width)) / np.sqrt(width)
    x = jax.random.normal(key_x, (8, FLAGS.tokens, width))
    xs = run(x, w, alpha_hidden=alpha_hidden, h0=h0)
    curves.append(jax.vmap(analysis.relative_rank_residual)(xs).mean(axis=1))
  return np.mean(curves, axis=0)


def main(_):
  rows = []
  for scale in map(float, FLAGS.weight_scale):
    for h0 in FLAGS.h0:
      for alpha_hidden in map(float, FLAGS.alpha_hidden):
        rows.append(((scale, h0, alpha_hidden), residual_by_layer(alpha_hidden, h0, scale)))
  print(f"{'scale':>5} {'h0':>12} {'α′':>4}  residual after layer 1..{FLAGS.layers}")
  for (scale, h0, alpha_hidden), curve in rows:
    print(f"{scale:5.1f} {h0:>12} {alpha_hidden:4.1f}  " + " ".join(f"{r:.1e}" for r in curve))
  if FLAGS.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scales = sorted({key[0] for key, _ in rows})
    fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 4), squeeze=False)
    for (scale, h0, alpha_hidden), curve in rows:
      ax = axes[0, scales.index(scale)]
      ax.semilogy(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-9),
                  "-" if h0 == "first_scores" else "--", label=f"α′={alpha_hidden} {h0}")
      ax.set(title=f"weight scale {scale}", xlabel="layer", ylabel="relative rank residual")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FLAGS.plot, dpi=120)
    print("saved", FLAGS.plot)


if __name__ == "__main__":
  app.run(main)
