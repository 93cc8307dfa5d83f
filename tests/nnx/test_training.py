"""Training the NNX module: an `nnx.jit` step with `nnx.Optimizer` (AdamW) against
the train package's Linen step, `nnx.split`/`merge` and an orbax round trip, and an
`nnx.vmap` sweep over α′ against separate Linen runs at each α′."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from mha_jax import nnx as mha_nnx
from mha_jax.train import steps, tasks

HOPFIELD = {"kind": "hopfield", "alpha": 0.6, "alpha_hidden": 0.5}
ALPHA_HIDDEN = (0.1, 0.5, 0.9)
# The key bias has an exactly zero gradient (softmax ignores a per-query shift), so
# its "gradient" is rounding noise that Adam's g/√v scales to ±lr; a larger ε keeps
# the comparison about the step, not about that noise.
TX = optax.adamw(1e-2, eps=1e-6, weight_decay=0.1)
# The two steps compile apart; where a gradient is nearly zero, Adam's g/√v turns
# its rounding into up to a few 1e-5 of weight: 1 % of one step (lr), far below a
# wrong or missing update (≈ lr).
PARAM_ATOL = 1e-4


def lm_batch(seed, batch=4, length=8, vocab=61):
  """Next-token batch with the second row's last three tokens padded out."""
  tokens = jax.random.randint(jax.random.key(seed), (batch, length + 1), 0, vocab)
  mask = jnp.ones((batch, length)).at[1, -3:].set(0.0)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


TASK = tasks.LanguageModelling(types.SimpleNamespace(seq_len=8, vocab_size=61))


def summed_loss(model, batch):
  x, kwargs = TASK.model_inputs(batch)
  logits, _ = model(x, train=True, **kwargs)
  loss, _, weight = TASK.weighted_losses(logits, batch, train=True)
  return loss.sum(), weight.sum()


def nnx_step(model, optimizer, batch):
  """Mean loss over the batch's weight, one AdamW step; sums first, divided once,
  as the Linen step does (see steps.train_step)."""
  (loss, weight), grads = nnx.value_and_grad(summed_loss, has_aux=True)(model, batch)
  denom = jnp.maximum(weight, 1.0)
  optimizer.update(model, jax.tree.map(lambda g: g / denom, grads))
  return loss / denom


nnx_train_step = nnx.jit(nnx_step)


def linen_run(linen, params, batches):
  """Losses and final params of the train package's own step, one step per batch."""
  state = {"step": jnp.int32(0), "params": params, "opt": TX.init(params),
           "rng": jax.random.key_data(jax.random.key(0))}
  step = jax.jit(functools.partial(steps.train_step, model=linen, tx=TX, task=TASK))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state["params"]


def nnx_params(module):
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def assert_trees_close(actual, expected, atol):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, atol=atol, rtol=0)


def loaded_module(tiny, name, **overrides):
  variant, opts = tiny.options(name, **overrides)
  module = mha_nnx.build_model(name, variant, rngs=nnx.Rngs(0), **opts)
  linen = tiny.linen_model(name, **overrides)
  params = tiny.linen_params(linen, tiny.model_input(name))
  return mha_nnx.load_linen_params(module, params), linen, params


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_train_steps_match_the_linen_step(tiny, name):
  module, linen, params = loaded_module(tiny, name, attention=HOPFIELD)
  optimizer = nnx.Optimizer(module, TX, wrt=nnx.Param)
  batches = [lm_batch(10)] * 3   # one batch: its loss must fall (random tokens)
  losses = np.array([float(nnx_train_step(module, optimizer, b)) for b in batches])
  expected_losses, expected_params = linen_run(linen, params, batches)
  np.testing.assert_allclose(losses, expected_losses, atol=1e-5, rtol=0)
  assert losses[-1] < losses[0] - 0.5        # it trains
  assert_trees_close(nnx_params(module), expected_params, atol=PARAM_ATOL)
  assert int(optimizer.step[...]) == 3


def test_split_merge_and_orbax_round_trip(tiny, tmp_path):
  module, _, params = loaded_module(tiny, "gpt2", attention=HOPFIELD)
  tokens = tiny.model_input("gpt2")
  expected, _ = module(tokens)
  graphdef, state = nnx.split(module)     # params and the Rngs streams
  np.testing.assert_array_equal(nnx.merge(graphdef, state)(tokens)[0], expected)

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
  variant, opts = tiny.options("gpt2", attention=HOPFIELD)
  abstract = nnx.eval_shape(lambda: mha_nnx.build_model("gpt2", variant, rngs=nnx.Rngs(9),
                                                        **opts))
  abstract_graphdef, abstract_state = nnx.split(abstract)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "state", abstract_state)
  restored_module = nnx.merge(abstract_graphdef, restored)
  np.testing.assert_array_equal(restored_module(tokens)[0], expected)
  assert_trees_close(nnx_params(restored_module), params, atol=0)


def test_vmap_over_alpha_hidden_matches_separate_linen_runs(tiny):
  """K runs, one per α′, trained in one vmapped step from the same start."""
  variant, opts = tiny.options("gpt2", attention=HOPFIELD)
  linen = tiny.linen_model("gpt2", attention=HOPFIELD)
  params = tiny.linen_params(linen, tiny.model_input("gpt2"))

  @nnx.vmap(in_axes=0, out_axes=0)
  def start_runs(alpha_hidden):
    module = mha_nnx.build_model("gpt2", variant, rngs=nnx.Rngs(0), **opts)
    mha_nnx.load_linen_params(module, params)
    mha_nnx.set_attention_overrides(module, alpha_hidden=alpha_hidden)
    return module, nnx.Optimizer(module, TX, wrt=nnx.Param)

  sweep_step = nnx.jit(nnx.vmap(nnx_step, in_axes=(0, 0, None)))

  runs, optimizers = start_runs(jnp.array(ALPHA_HIDDEN))
  batches = [lm_batch(seed) for seed in (20, 21)]
  losses = np.stack([np.asarray(sweep_step(runs, optimizers, b)) for b in batches], axis=1)
  swept = nnx_params(runs)
  for i, alpha_hidden in enumerate(ALPHA_HIDDEN):
    alone = tiny.linen_model("gpt2", attention=dict(HOPFIELD, alpha_hidden=alpha_hidden))
    expected_losses, expected_params = linen_run(alone, params, batches)
    np.testing.assert_allclose(losses[i], expected_losses, atol=1e-5, rtol=0)
    assert_trees_close(jax.tree.map(lambda a, i=i: a[i], swept), expected_params,
                       atol=PARAM_ATOL)
  assert np.ptp(losses[:, 1]) > 1e-4     # α′ changed the runs


def test_vmap_over_alpha_and_alpha_hidden_logits(tiny):
  module, _, params = loaded_module(tiny, "vit", attention=HOPFIELD)
  images = tiny.model_input("vit")
  settings = [(0.2, 0.1), (0.5, 0.5), (0.9, 0.8)]
  mha_nnx.set_attention_overrides(module, alpha=jnp.array([a for a, _ in settings]),
                                  alpha_hidden=jnp.array([h for _, h in settings]))
  axes = nnx.StateAxes({mha_nnx.AttentionOverride: 0, ...: None})
  logits = nnx.vmap(lambda m, x: m(x)[0], in_axes=(axes, None))(module, images)
  for i, (alpha, alpha_hidden) in enumerate(settings):
    alone = tiny.linen_model("vit", attention=dict(HOPFIELD, alpha=alpha,
                                                   alpha_hidden=alpha_hidden))
    np.testing.assert_allclose(logits[i], alone.apply({"params": params}, images)[0],
                               atol=1e-6, rtol=0)
