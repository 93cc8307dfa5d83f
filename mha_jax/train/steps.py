"""Pure train and eval steps. State is a plain dict
{"step": i32[], "params": ..., "opt": ..., "rng": u32 key data}; every step takes
and returns arrays only, so it jits with shardings and donates the state. What
the batch means (inputs, loss) is the task's (mha_jax.train.tasks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _micro_batches(batch, num_micro):
  """[B, ...] → [A, B/A, ...], micro-batch a = rows a, a+A, ... so that each
  device's contiguous shard of B stays on that device in every micro-batch."""
  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state, batch, *, model, tx, task, grad_accum_steps=1, skip_nonfinite=False):
  """One optimizer step over one global batch; returns (state, metrics).

  metrics["nonfinite"] is 1 when the loss, the gradient norm or the updated
  parameters are not finite; with `skip_nonfinite` such an update is not applied
  (the step counter and the data still advance: that batch is skipped)."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

  def loss_sums(params, micro, key):
    x, kwargs = task.model_inputs(micro)
    logits, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": key}, **kwargs)
    loss, correct, weight = task.weighted_losses(logits, micro, train=True)
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
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            & jnp.isfinite(metrics["param_norm"]))
  metrics["nonfinite"] = 1 - finite.astype(jnp.int32)
  if skip_nonfinite:
    params, opt = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               (params, opt), (state["params"], state["opt"]))
  new_state = dict(state, step=state["step"] + 1, params=params, opt=opt)
  return new_state, metrics


def eval_step(params, batch, *, model, task):
  """Sums over one batch (padding has weight 0): loss, correct, weight."""
  x, kwargs = task.model_inputs(batch)
  logits, _ = model.apply({"params": params}, x, train=False, **kwargs)
  loss, correct, weight = task.weighted_losses(logits, batch, train=False)
  return {"loss": loss.sum(), "correct": correct.sum(), "weight": weight.sum()}
