"""The README demo: a small ViT on offline MNIST (mnist5k: 4000 train / 1000
validation images, 28×28), standard attention vs MHA, minutes each on CPU.
No download beyond `pip install 'mha-jax[data]'`.

  python -m mha_jax.main --config=configs/demo.py:attention=standard --workdir=runs/demo_std
  python -m mha_jax.main --config=configs/demo.py:attention=hopfield --workdir=runs/demo_mha

Model: 6 layers, width 64, 4 heads, patch 7 (16 patches + class token).
Training: 500 steps of batch 128 (16 epochs), AdamW lr 2e-3, cosine, 40 warmup.
Compare `eval/accuracy` in runs/*/metrics.jsonl (experiments/compare_runs.py);
seeded comparisons at CPU scale are in RESULTS.md, read from their cell files.
`smoke`: 20 steps, seconds.
"""

from mha_jax import config_util


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(attention="standard", alpha=0.5, alpha_hidden=None, residual=config_util.DEFAULT_RESIDUAL,
                 depth=6, steps=500, seed=0, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  config = config_util.base_config()
  config.update(seed=a.seed, total_steps=a.steps, batch_size=128, eval_batch_size=200,
                log_every=20, eval_every=100,
                checkpoint_every=200, label_smoothing=0.0)
  # No flips (mirrored digits are not digits) and no shifted crops: with 7-pixel
  # patches a 4-pixel shift costs more accuracy in 500 steps than it buys.
  config.data = config_util.data_config("mnist5k", flip=False, crop="none")
  config.model = dict(name="vit", variant="Ti/7", num_layers=a.depth, width=64, num_heads=4,
                      mlp_dim=128, pool="token",
                      attention=config_util.attention_config(a.attention, a.alpha,
                                                             a.alpha_hidden, a.residual))
  config.optim.update(learning_rate=2e-3, warmup_steps=40, weight_decay=0.05)
  if a.smoke:
    config.update(total_steps=20, log_every=5, eval_every=10, eval_steps=1,
                  checkpoint_every=10)
  return config
