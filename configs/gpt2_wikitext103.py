"""GPT-2 Small / Medium from scratch on WikiText-103 (spec §4), nanoGPT recipe:
context 1024, AdamW (β2 0.95, wd 0.1 on kernels and the token embedding), lr
6e-4 (Medium 3e-4) with 2000 warmup steps and cosine to 10 %, clip 1.0,
dropout 0.1, batch 64×1024 tokens, 30k steps (~16 epochs of ~120M BPE tokens).

  python -m mha_jax.main --config=configs/gpt2_wikitext103.py:size=small,attention=hopfield,alpha=0.5 \\
      --workdir=runs/gpt2s_wt103_mha05

Paper, test perplexity (standard → MHA α=α′=0.5): Small 22.87 → 20.70,
Medium 20.85 → 19.61. Compare `eval/perplexity_original` (per word) on
`--config.data.eval_split=test`. Small: ~1 day on one H100 class GPU.
`smoke`: a 2-layer GPT on offline Shakespeare characters, seconds on CPU.
"""

from mha_jax import config_util


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(size="small", attention="standard", alpha=0.5, alpha_hidden=None,
                 residual=config_util.DEFAULT_RESIDUAL, steps=30_000, batch_size=64, seq_len=1024, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  config = config_util.base_config()
  config.update(total_steps=a.steps, batch_size=a.batch_size, eval_batch_size=a.batch_size,
                log_every=50,
                eval_every=2000, eval_steps=-1, checkpoint_every=2000)
  config.data = config_util.data_config("wikitext103", seq_len=a.seq_len)
  config.model = dict(name="gpt2", variant=a.size, dropout=0.1, max_len=a.seq_len,
                      dtype="float32",   # bfloat16 on TPU: --config.model.dtype=bfloat16
                      attention=config_util.attention_config(a.attention, a.alpha,
                                                             a.alpha_hidden, a.residual))
  config.optim.update(learning_rate=6e-4 if a.size == "small" else 3e-4, warmup_steps=2000,
                      end_lr_ratio=0.1, b2=0.95, weight_decay=0.1,
                      decay_params=("kernel", "embedding"))
  if a.smoke:
    config_util.shrink_to_smoke(config)
  return config
