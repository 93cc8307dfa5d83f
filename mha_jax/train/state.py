"""Train state: {"step", "params", "opt", "rng"}, born sharded, from one of
three origins (as MaxText orders them): this workdir's newest readable
checkpoint ("resume"), `config.init_from` params ("init_from"), or "fresh".
"""

from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from mha_jax.train import checkpoint, sharding
from mha_jax.train.validation import ConfigError


@dataclasses.dataclass
class Setup:
  state: dict
  shardings: dict          # NamedShardings, the tree of `state`
  origin: str              # "fresh" | "resumed from step N" | "init_from DIR"
  data_state: dict | None = None   # the train iterator's position on resume
  resumed_step: int | None = None


def init_fn(model, tx, task, seed):
  """key → boxed state (params carry their logical axis names); training starts
  from init_fn(...)(jax.random.key(seed)), unboxed and sharded."""
  def init(key):
    params = model.init({"params": key}, task.dummy_input(), train=False)["params"]
    train_key = jax.random.fold_in(jax.random.key(seed), 1)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params),
            "rng": jax.random.key_data(train_key)}
  return init


def abstract_state(model, tx, task, seed, mesh, rules):
  """(shapes, NamedShardings) of the state, without making an array (AOT, resume)."""
  abstract_boxed = jax.eval_shape(init_fn(model, tx, task, seed), jax.random.key(seed))
  return nn.unbox(abstract_boxed), sharding.state_shardings(abstract_boxed, mesh, rules)


def setup_state(config, model, tx, task, mesh, rules, manager=None, say=logging.warning):
  """The state training starts from: resume (if `manager` holds a readable step) >
  init_from > fresh. Params are never materialised unsharded."""
  init = init_fn(model, tx, task, config.seed)
  abstract, state_sh = abstract_state(model, tx, task, config.seed, mesh, rules)
  if manager is not None:
    resumed = checkpoint.restore_latest(manager, abstract, state_sh, say=say)
    if resumed is not None:
      step, state, data_state = resumed
      return Setup(state, state_sh, f"resumed from step {step}", data_state, step)
  # Outside `sharding.step_context`: unboxing there would constrain each parameter
  # to its raw logical spec, including dimensions the mesh does not divide;
  # state_sh holds the fitted specs.
  state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=state_sh)(
      jax.random.key(config.seed))
  if not config.get("init_from"):
    return Setup(state, state_sh, "fresh")
  exclude = config.get("init_from_exclude", "")
  try:
    loaded = checkpoint.load_init_params(config.init_from, model, exclude)
    state["params"], kept = checkpoint.merge_params(state["params"], loaded, exclude)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"init_from={config.init_from!r}: {e}") from e
  origin = f"init_from {config.init_from}" + (f" (fresh: {', '.join(kept)})" if kept else "")
  return Setup(state, state_sh, origin)
