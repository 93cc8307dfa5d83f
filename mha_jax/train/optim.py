"""Optimizer from `config.optim`: AdamW with a weight-decay mask, warmup + cosine,
global-norm clipping and optional frozen parameters (linear probes).

Gradient accumulation is not here: `steps.train_step` scans over micro-batches,
so one optimizer step always consumes one global batch and the schedule counts
optimizer steps.
"""

from __future__ import annotations

import re

import jax
import optax


def param_name(path):
  """'encoder/layers/attention/query/kernel' from a tree path (box attributes skipped)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def make_schedule(optim, total_steps):
  """Linear warmup from 0 to `learning_rate`, then cosine (or constant) decay."""
  warmup = min(optim.warmup_steps, total_steps)
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1)),
         optax.constant_schedule(optim.learning_rate)], [warmup])
  if optim.schedule != "cosine":
    raise ValueError(f"optim.schedule={optim.schedule!r}; allowed: 'cosine', 'constant'")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim.learning_rate * optim.end_lr_ratio)


def _leaf_labels(params, fn):
  return jax.tree_util.tree_map_with_path(lambda path, _: fn(param_name(path)), params)


def make_optimizer(optim, total_steps):
  """Returns (tx, schedule). Decay applies to leaves whose last name is in
  `optim.decay_params` (default kernels only: norms, biases, embeddings, the
  class token and position tables are not decayed, as in nanoGPT / DeiT)."""
  schedule = make_schedule(optim, total_steps)
  decay_names = frozenset(optim.decay_params)

  def decay_mask(params):
    return _leaf_labels(params, lambda name: name.rsplit("/", 1)[-1] in decay_names)

  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=decay_mask))
  if optim.get("trainable"):
    # Frozen leaves get zero updates and no optimizer moments (linear probe).
    pattern = re.compile(optim.trainable)
    tx = optax.multi_transform(
        {"train": tx, "freeze": optax.set_to_zero()},
        lambda params: _leaf_labels(
            params, lambda name: "train" if pattern.search(name) else "freeze"))
  return tx, schedule
