"""LLaMA-style decoder from scratch on WikiText-103, CNN/DailyMail or BookCorpus
(spec §4). The paper's LLaMA size and recipe were not recoverable: default the
350M preset (24 layers, width 1024), GPT-2 BPE, context 1024, AdamW lr 3e-4
(β2 0.95, wd 0.1), 2000 warmup steps, cosine to 10 %, batch 64×1024, 30k steps.

  python -m mha_jax.main --config=configs/llama_lm.py:dataset=cnn_dailymail,attention=hopfield \\
      --workdir=runs/llama_cnndm_mha05

Paper perplexity (standard → MHA α=α′=0.5): WikiText-103 14.49 → 14.29,
CNN/DailyMail 19.36 → 18.97, BookCorpus 23.76 → 23.50. Expected: a gain of a few
tenths. `size=1b` with `--config.mesh.fsdp=-1 --config.mesh.data=1` is the
scale question of spec §6. `smoke`: a 2-layer LLaMA on offline Shakespeare characters.
"""

from mha_jax import config_util

DATASETS = ("wikitext103", "cnn_dailymail", "bookcorpus")


# `:key=value` arguments of this config and their defaults (typed by them).
ARGUMENTS = dict(dataset="wikitext103", size="350m", attention="standard", alpha=0.5,
                 alpha_hidden=None, residual=config_util.DEFAULT_RESIDUAL, steps=30_000, batch_size=64,
                 seq_len=1024, smoke=False)


def get_config(arg=None):
  a = config_util.parse_arg(arg, **ARGUMENTS)
  if a.dataset not in DATASETS:
    raise ValueError(f"dataset={a.dataset!r}; allowed: {sorted(DATASETS)}")
  config = config_util.base_config()
  config.update(total_steps=a.steps, batch_size=a.batch_size, eval_batch_size=a.batch_size,
                log_every=50,
                eval_every=2000, eval_steps=200, checkpoint_every=2000)
  config.data = config_util.data_config(a.dataset, seq_len=a.seq_len)
  config.model = dict(name="llama", variant=a.size, max_len=a.seq_len, dtype="bfloat16",
                      attention=config_util.attention_config(a.attention, a.alpha,
                                                             a.alpha_hidden, a.residual))
  config.optim.update(learning_rate=3e-4, warmup_steps=2000, end_lr_ratio=0.1, b2=0.95,
                      weight_decay=0.1)
  if a.smoke:
    config_util.shrink_to_smoke(config)
  return config
