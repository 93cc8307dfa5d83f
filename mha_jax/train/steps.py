"""Pure train and eval steps. State is a plain dict
{"step": i32[], "params": ..., "opt": ..., "rng": u32 key data}; every step takes
and returns arrays only, so it jits with shardings and donates the state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def model_inputs(batch, kind):
  """(positional input, keyword args) of the model for one batch."""
  if kind == "image":
    return batch["image"], {}
  return batch["inputs"], {"padding_mask": batch["mask"] > 0}


def weighted_losses(logits, batch, kind, label_smoothing):
  """Per-example (image) or per-token (text) losses, correctness and weights."""
  if kind == "image":
    num_classes = logits.shape[-1]
    if "soft_label" in batch:   # mixup / cutmix targets from the input pipeline
      targets = batch["soft_label"]
    else:
      targets = jax.nn.one_hot(batch["label"], num_classes)
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
    correct = jnp.argmax(logits, -1) == batch["label"]
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = jnp.argmax(logits, -1) == batch["targets"]
  weight = batch["mask"].astype(jnp.float32)
  return loss * weight, correct * weight, weight


def _micro_batches(batch, num_micro):
  """[B, ...] → [A, B/A, ...], micro-batch a = rows a, a+A, ... so that each
  device's contiguous shard of B stays on that device in every micro-batch."""
  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state, batch, *, model, tx, kind, label_smoothing=0.0, grad_accum_steps=1):
  """One optimizer step over one global batch; returns (state, metrics)."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

  def loss_sums(params, micro, key):
    x, kwargs = model_inputs(micro, kind)
    logits, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": key}, **kwargs)
    loss, correct, weight = weighted_losses(logits, micro, kind, label_smoothing)
    return loss.sum(), (correct.sum(), weight.sum())

  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

  def accumulate(carry, micro_and_index):
    micro, index = micro_and_index
    (loss, (correct, weight)), grads = grad_fn(state["params"], micro,
                                               jax.random.fold_in(step_key, index))
    sums = (loss, correct, weight)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, state["params"]), (0.0, 0.0, 0.0))
  micro = _micro_batches(batch, grad_accum_steps)
  (grads, (loss, correct, weight)), _ = jax.lax.scan(
      accumulate, zeros, (micro, jnp.arange(grad_accum_steps)))
  # Sums over all micro-batches divided once: accumulation equals one big batch.
  denom = jnp.maximum(weight, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt = tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss / denom, "accuracy": correct / denom,
             "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
  new_state = dict(state, step=state["step"] + 1, params=params, opt=opt)
  return new_state, metrics


def eval_step(params, batch, *, model, kind):
  """Sums over one batch (padding has weight 0): loss, correct, weight."""
  x, kwargs = model_inputs(batch, kind)
  logits, _ = model.apply({"params": params}, x, train=False, **kwargs)
  loss, correct, weight = weighted_losses(logits, batch, kind, 0.0)
  return {"loss": loss.sum(), "correct": correct.sum(), "weight": weight.sum()}
