"""`train_and_evaluate(config, workdir)`: the jit-sharded train / eval loop.

State is born sharded (`eval_shape`, then `jit(init, out_shardings=...)`), each
step is a donated `jax.jit` with in/out shardings over a (data, fsdp, tensor)
mesh, host batches become global arrays with
`jax.make_array_from_process_local_data`, and everything else (logging,
checkpoints, preemption, NaN checks) happens on the host between steps.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp

from mha_jax import data as data_lib
from mha_jax import models
from mha_jax.train import checkpoint, loop, optim, sharding, steps
from mha_jax.train.sharding import ConfigError


class Preemption:
  """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and returns."""

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def build_input(config, *, train):
  """The data issue's Input; an unknown dataset or split fails as a ConfigError."""
  try:
    return data_lib.build_input(
        config.data, split=config.data.train_split if train else config.data.eval_split,
        global_batch_size=config.batch_size if train else config.eval_batch_size,
        train=train, seed=config.seed)
  except (ValueError, KeyError, FileNotFoundError, data_lib.MissingDataError) as e:
    raise ConfigError(f"data {config.data.get('name')!r}: {e}") from e


def build_model(model_config, info):
  """Model from `config.model`; class count, image size, vocabulary and length
  default to the dataset's."""
  options = model_config.to_dict()
  if info.kind == "image":
    options.setdefault("num_classes", info.num_classes)
    options.setdefault("image_size", info.image_shape[0])
  else:
    options.setdefault("vocab_size", info.vocab_size)
    options.setdefault("max_len", info.seq_len)
  try:
    return models.build_model(**options)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"model: {e}") from e


def dummy_input(info):
  if info.kind == "image":
    return jnp.zeros((1,) + tuple(info.image_shape), jnp.float32)
  return jnp.zeros((1, info.seq_len), jnp.int32)


def make_init(model, tx, info, seed):
  """init(key) → boxed state {"step", "params", "opt", "rng"}."""
  def init(key):
    params = model.init({"params": key}, dummy_input(info), train=False)["params"]
    train_key = jax.random.fold_in(jax.random.key(seed), 1)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params),
            "rng": jax.random.key_data(train_key)}
  return init


def init_state(config, model, tx, info, mesh, rules):
  """Fresh state born sharded; returns (state, state_shardings, abstract state)."""
  init = make_init(model, tx, info, config.seed)
  abstract_boxed = jax.eval_shape(init, jax.random.key(config.seed))
  state_sh = sharding.state_shardings(abstract_boxed, mesh, rules)
  abstract = nn.unbox(abstract_boxed)
  # Outside `sharding.step_context`: unboxing there would constrain each parameter
  # to its raw logical spec, including dimensions the mesh does not divide;
  # state_sh holds the fitted specs.
  make = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=state_sh)
  return lambda: make(jax.random.key(config.seed)), state_sh, abstract


def create_state(config, model, tx, info, mesh, rules, manager):
  """Resume (this workdir) > init_from (params only) > fresh; returns
  (state, state_shardings, data_state or None)."""
  make, state_sh, abstract = init_state(config, model, tx, info, mesh, rules)
  resumed = checkpoint.restore_latest(manager, abstract, state_sh)
  if resumed is not None:
    return resumed[0], state_sh, resumed[1]
  state = make()
  if config.get("init_from"):
    try:
      loaded = checkpoint.load_init_params(config.init_from, model,
                                           config.get("init_from_exclude", ""))
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"init_from={config.init_from!r}: {e}") from e
    state["params"], fresh = checkpoint.merge_params(state["params"], loaded)
    logging.info("init_from %s; freshly initialised: %s", config.init_from, fresh)
  return state, state_sh, None


def validate(config):
  """Checks that need no data or devices beyond the count; one-line errors."""
  for key in ("total_steps", "batch_size", "eval_batch_size", "grad_accum_steps"):
    if int(config[key]) < 1:
      raise ConfigError(f"config.{key}={config[key]} must be >= 1")
  if config.optim.warmup_steps < 0:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} must be >= 0")


def compile_steps(config, model, tx, kind, state_sh, mesh):
  data_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, model=model, tx=tx, kind=kind,
                        label_smoothing=config.get("label_smoothing", 0.0),
                        grad_accum_steps=config.grad_accum_steps),
      in_shardings=(state_sh, data_sh), out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, kind=kind),
                    in_shardings=(state_sh["params"], data_sh), out_shardings=repl)
  return train_fn, eval_fn


def write_config(config, workdir):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the
  last eval metrics ({} when evaluation is off)."""
  if config.get("distributed"):
    jax.distributed.initialize()   # before any other JAX call that touches devices
  logging.info("process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.batch_size, mesh, config.grad_accum_steps)
  sharding.check_batch(config.eval_batch_size, mesh, 1)
  rules = sharding.logical_rules(config)
  train_input = build_input(config, train=True)
  eval_input = build_input(config, train=False) if config.eval_every else None
  info = train_input.info
  model = build_model(config.model, info)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  manager = checkpoint.make_manager(workdir, config)
  state, state_sh, data_state = create_state(config, model, tx, info, mesh, rules, manager)
  if data_state is not None:
    train_input.set_state(data_state)
  train_fn, eval_fn = compile_steps(config, model, tx, info.kind, state_sh, mesh)
  runner = loop.TrainLoop(config, workdir, info, schedule, manager, mesh,
                          initial_step=int(jax.device_get(state["step"])))
  try:
    with sharding.step_context(mesh, rules), Preemption() as preemption:
      return runner.run(state, train_fn, eval_fn, train_input, eval_input, preemption)
  finally:
    manager.wait_until_finished()   # a pending async save completes (or never appears)
    manager.close()
    runner.writer.close()
