"""Sweep grids for experiments/sweep.py and RESULTS.md: one preset per claim.

  python experiments/sweep.py --config=configs/sweep.py:preset=alpha_grid --outdir=sweeps/alpha_grid

Each preset is a base training config (a tiny CPU-sized model on offline data),
changes to it, and the grid axes of mha_jax.sweep.grid (kind, alpha,
alpha_hidden, residual, h0, reset_every, energy_steps, separation,
separation_param, depth, seed); alpha_hidden -1 = α.
`data` (optional) replaces the base config's dataset; `metric` names the number
compared ("" = perplexity for text, accuracy for images; associative recall is
scored by the fraction of answers recalled); `controls` the settings equal to the
baseline by construction.
`seeds`: the preset's own count (3, or 5 where a row's verdicts rest on small
differences: rows a and c, issue 22 §1) unless `seeds=N` is given.
`smoke`: two seeds, depth 2, 4 steps — seconds, for tests.
"""

import ml_collections

from mha_jax import config_util, kinds

MHA = ("standard", "hopfield")
WITH_RIVALS = MHA + kinds.names(rival=True)   # the published cross-layer remedies
OPTIM = dict(learning_rate=3e-3, warmup_steps=20)
RESIDUALS = ("convex", "scaled_branch", "standard")


def vit_digits(steps, optim=OPTIM):
  """ViT on sklearn digits (8×8, 2×2 patches: 16 tokens + class), width 32."""
  return ("configs/vit_cifar.py:smoke", dict(total_steps=steps, batch_size=64, eval_steps=-1,
                                             log_every=50, eval_every=0, checkpoint_every=0,
                                             progress_bar=False, optim=optim))


def gpt_char(steps, eval_steps=8, optim=OPTIM):
  """GPT on Shakespeare characters, T = 64, width 32."""
  return ("configs/gpt2_wikitext103.py:smoke", dict(total_steps=steps, batch_size=32,
                                                     eval_steps=eval_steps, log_every=50,
                                                     eval_every=0, checkpoint_every=0,
                                                     progress_bar=False, optim=optim))


def gpt_on(dataset, steps, seq_len, eval_steps=8, optim=OPTIM, batch_size=32, **data_fields):
  """The same GPT on another dataset (its whole config.data replaced), T = seq_len."""
  spec, updates = gpt_char(steps, eval_steps, optim)
  updates.update(model=dict(max_len=seq_len), batch_size=batch_size)
  return spec, dict(updates, data=dict(name=dataset, seq_len=seq_len, **data_fields))


SEPARATIONS = ("softmax", "entmax", "sparsemax", "cubic")
ENERGY_HEADS = dict(kind=MHA + ("hopfield_energy",), energy_steps=(1, 3),
                    separation=SEPARATIONS, retrieval_kinds=("hopfield_energy",),
                    residual=("standard",), depth=(2,))

PRESETS = {
    # (a) ViT: standard vs MHA α = α′ ∈ {0.5, 0.7}, depth 6 and 12, every residual form
    "vit_depth": (vit_digits(400), dict(kind=MHA, alpha=(0.5, 0.7), residual=RESIDUALS,
                                        depth=(6, 12), seeds=5)),
    # (b) small GPT on Shakespeare characters, same grid
    "gpt_char": (gpt_char(300), dict(kind=MHA, alpha=(0.5, 0.7), residual=RESIDUALS,
                                     depth=(6, 12), seeds=5)),
    # (b) the same GPT on Shakespeare GPT-2 BPE tokens: the 50k-entry vocabulary makes a
    # token ~15× a character token on CPU, so batch 8, one α, the paper's convex form and
    # x + u, depth 6
    "gpt_bpe": (gpt_on("shakespeare_bpe", 300, 64, batch_size=8),
                dict(kind=MHA, alpha=(0.5,), residual=("convex", "standard"), depth=(6,),
                     seeds=5)),
    # (g) multi-query associative recall (mha_jax/data/recall.py), every kind
    "recall": (gpt_on("associative_recall", 1000, 16, eval_steps=16, num_keys=16,
                      num_values=16, optim=dict(learning_rate=1e-2, warmup_steps=50)),
               dict(kind=WITH_RIVALS, residual=("standard",), depth=(2, 4))),
    # (c) α × α′, convex residual (the paper's equation as the spec reads it), depth 6
    "alpha_grid": (vit_digits(400), dict(kind=MHA, alpha=(0.2, 0.5, 0.8),
                                         alpha_hidden=(0.0, 0.2, 0.5, 0.8, 1.0),
                                         residual=("convex",), depth=(6,), seeds=5)),
    # (d) H_0 policies and reset-every-N (0 = never = N = L), residual standard
    "h0_reset": (vit_digits(400), dict(kind=MHA, h0=("zeros", "first_scores", "noise"),
                                       reset_every=(0, 1, 2, 4), residual=("standard",),
                                       depth=(8,))),
    # (e) rivals, shallow and deep (with skips; `noskip` in the base for without)
    "rivals": (vit_digits(400), dict(kind=WITH_RIVALS, residual=("standard",),
                                     depth=(2, 8))),
    "rivals_noskip": (vit_digits(400), dict(kind=WITH_RIVALS, residual=("standard",),
                                            depth=(2, 8), skip=False)),
    # (§4 of issue 22) which residual reading trains like the paper (α = 1 → chance, α = 0
    # near the best): depth 12 and 24, a 4× longer schedule with 10 % warm-up, α′ = 0.5
    "residual_reading": (vit_digits(1600, dict(learning_rate=1e-3, warmup_steps=160)),
                         dict(kind=MHA, alpha=(0.0, 0.5, 1.0), alpha_hidden=(0.5,),
                              residual=RESIDUALS, depth=(12, 24))),
    # (j) non-linear heads (issue 20): standard, MHA, Hopfield retrieval with 1 and 3 steps
    # × {softmax, entmax 1.5 (its default parameter), sparsemax, cubic (0, 1/6)}; same
    # parameters in every setting. Sized for 2 shared CPU cores: depth 2, short runs.
    "energy_heads": (vit_digits(200), ENERGY_HEADS),
    "energy_heads_char": (gpt_char(150, eval_steps=4), ENERGY_HEADS),
    "energy_heads_recall": (gpt_on("associative_recall", 500, 16, eval_steps=8, num_keys=16,
                                   num_values=16, optim=dict(learning_rate=1e-2,
                                                             warmup_steps=50)),
                            ENERGY_HEADS),
}
# Settings equal to standard attention by construction (RESULTS.md checks Δ = 0 exactly and
# leaves them out of the verdict counts): H_n = s_n in every layer; ReZero without skips.
CONTROLS = {"h0_reset": (dict(kind="hopfield", h0="first_scores", reset_every=1),),
            "rivals_noskip": (dict(kind="rezero"),)}
DEFAULT_AXES = dict(kind=("hopfield",), alpha=(0.5,), alpha_hidden=(-1.0,),
                    residual=(config_util.DEFAULT_RESIDUAL,), h0=("zeros",), reset_every=(0,),
                    energy_steps=(0,), separation=("softmax",), separation_param=(None,),
                    depth=(6,), seed=(0, 1, 2))


def get_config(arg=None):
  a = config_util.parse_arg(arg, preset="alpha_grid", seeds=0, mode="vmapped", smoke=False)
  if a.preset not in PRESETS:
    raise ValueError(f"preset={a.preset!r}; allowed: {sorted(PRESETS)}")
  (base, updates), axes = PRESETS[a.preset]
  axes, updates = dict(axes), dict(updates)
  skip = axes.pop("skip", True)
  preset_seeds = axes.pop("seeds", 3)
  seeds = a.seeds or preset_seeds   # seeds=N overrides the preset's own count
  config = ml_collections.ConfigDict()
  config.base = base
  config.data = updates.pop("data", {})   # {} = the base config's dataset
  config.metric = "accuracy" if config.data.get("name") == "associative_recall" else ""
  config.base_updates = dict(updates, model=dict(updates.get("model", {}),
                                                 skip_connections=skip))
  config.grid = {**DEFAULT_AXES, **axes, "seed": tuple(range(seeds))}
  config.controls = [dict(c) for c in CONTROLS.get(a.preset, ())]
  config.mode = a.mode
  config.eval_steps = updates["eval_steps"]
  if a.smoke:   # the first two values of each axis, depth 2, two seeds, 4 steps
    config.base_updates.update(total_steps=4, batch_size=16)
    config.grid.update({axis: tuple(values)[:2] for axis, values in config.grid.items()})
    config.grid.update(depth=(2,), seed=(0, 1))
    config.eval_steps = 2
  return config
