"""`train_and_evaluate(config, workdir)`: the jit-sharded train / eval loop.

State is born sharded (`eval_shape`, then `jit(init, out_shardings=...)`), each
step is a donated `jax.jit` with in/out shardings over a (data, fsdp, tensor)
mesh, compiled ahead of the first step, host batches become global arrays with
`jax.make_array_from_process_local_data`, and everything else (logging,
checkpoints, preemption, non-finite checks) happens on the host between steps.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import tqdm

from mha_jax import data as data_lib
from mha_jax import distributed, flops, models
from mha_jax.train import checkpoint, loop, metrics, optim, sharding, state as state_lib
from mha_jax.train import profiler, steps, tasks, validation, workdir as workdir_lib
from mha_jax.train.preemption import Preemption
from mha_jax.train.validation import ConfigError


def say(text):
  """One console line from the coordinator (through tqdm, so a bar stays intact)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(text)


def make_input(config, *, train):
  """The train or eval split of `config.data` as the data package's Input; an unknown
  dataset or split fails as a ConfigError."""
  try:
    return data_lib.build_input(
        config.data, split=config.data.train_split if train else config.data.eval_split,
        global_batch_size=config.batch_size if train else config.eval_batch_size,
        train=train, seed=config.seed)
  except (ValueError, KeyError, FileNotFoundError, data_lib.MissingDataError) as e:
    raise ConfigError(f"data {config.data.get('name')!r}: {e}") from e


def make_model(model_config, task):
  """Model from `config.model`; the data's facts (classes and image size, or
  vocabulary and length) fill what the config leaves out."""
  options = {**task.model_defaults(), **model_config.to_dict()}
  try:
    return models.build_model(**options)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"model: {e}") from e


def make_steps(config, model, tx, task, state_sh, mesh):
  """(train_fn, eval_fn): the steps jitted with shardings, the train step donating
  its state. Not compiled yet: see `compile_train_step`."""
  data_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, model=model, tx=tx, task=task,
                        grad_accum_steps=config.grad_accum_steps,
                        skip_nonfinite=config.get("max_skipped_steps", 0) > 0),
      in_shardings=(state_sh, data_sh), out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, task=task),
                    in_shardings=(state_sh["params"], data_sh), out_shardings=repl)
  return train_fn, eval_fn


def compile_train_step(train_fn, state, batch):
  """Ahead-of-time compilation for these shapes and shardings; returns the
  executable and the seconds it took."""
  start = time.perf_counter()
  compiled = train_fn.lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def start_line(config, mesh, setup, workdir):
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.state["params"]))
  devices = jax.devices()
  return (f"training on {len(devices)} {devices[0].platform} device(s), "
          f"{jax.process_count()} process(es), mesh "
          + " ".join(f"{k}={v}" for k, v in mesh.shape.items())
          + f"; {num_params / 1e6:.2f}M params; global batch {config.batch_size}; "
          f"workdir {os.path.abspath(workdir)}; {setup.origin}")


def end_line(step, last_eval, workdir):
  results = ", ".join(f"{k}={v:.4g}" for k, v in last_eval.items()) or "no evaluation"
  return (f"done at step {step}: {results}. Metrics {os.path.join(workdir, 'metrics.jsonl')} "
          f"(plot: python experiments/compare_runs.py --workdirs={workdir} "
          f"--plot={os.path.join(workdir, 'curves.png')}), checkpoints "
          f"{os.path.join(workdir, 'checkpoints')}")


def _claim_workdir(config, workdir, manager):
  """Refuse a resume with another config (unless forced); returns the changed fields."""
  saved = workdir_lib.read_config(workdir)
  if saved is None or not manager.all_steps():
    return []
  return validation.check_same_run(saved, config, workdir)


def _record_start(config, workdir, setup, changed):
  """config.json is the run's identity: written when it starts (or is forced on)."""
  if jax.process_index() != 0:
    return
  if setup.resumed_step is None or changed:
    workdir_lib.write_config(config, workdir)
  if changed:
    say(f"force_resume: continuing with changed {', '.join(changed)}")
  dropped = workdir_lib.trim_metrics(workdir, setup.resumed_step or 0)
  if dropped:
    say(f"metrics.jsonl: dropped {dropped} rows after step {setup.resumed_step or 0} "
        f"(they are trained again)")


def join_job(config, cluster=None):
  """Joins a multi-process job (main's flags > JAX_* environment > a cluster JAX
  detects) and checks that every process runs this config; a no-op for one process.
  Runs before any other JAX call that touches devices."""
  cluster = cluster or distributed.resolve(auto_detect=config.get("distributed", False))
  distributed.initialize(cluster, config.get("distributed_timeout_s",
                                             distributed.DEFAULT_TIMEOUT_S))
  distributed.check_peers_agree(config.to_json_best_effort(sort_keys=True),
                                cluster.num_processes if cluster else None)
  profiler.enable_compilation_cache(config.get("compilation_cache_dir", ""))


def train_and_evaluate(config, workdir, preemption=None, cluster=None):
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the
  last eval metrics ({} when evaluation is off). `preemption`: an installed
  Preemption (mha_jax.main installs one before JAX starts); default: one for
  the duration of this call. `cluster`: a distributed.Cluster from main's flags."""
  own_preemption = preemption is None
  preemption = preemption or Preemption().install()
  lock = workdir_lib.WorkdirLock(workdir)
  try:
    join_job(config, cluster)
    if jax.process_count() > 1:   # a signal to any process now stops every process
      preemption.join(distributed.IntGather())
    validation.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    if jax.process_count() > 1:   # one line per process: its devices and the mesh
      print(distributed.describe(mesh), flush=True)
    sharding.check_batch(config.batch_size, mesh, config.grad_accum_steps)
    sharding.check_batch(config.eval_batch_size, mesh, 1)
    if jax.process_index() == 0:   # the coordinator holds the lock for the whole job
      os.makedirs(workdir, exist_ok=True)
      stale = lock.acquire()
      if stale:
        say(f"took over the stale lock of pid {stale['pid']} on {stale['host']} "
            f"(since {stale['started']})")
    return _train(config, workdir, mesh, preemption)
  finally:
    lock.release()
    preemption.join(None)
    if own_preemption:
      preemption.uninstall()


def _train(config, workdir, mesh, preemption):
  rules = sharding.logical_rules(config)
  train_input = make_input(config, train=True)
  eval_input = make_input(config, train=False) if config.eval_every else None
  task = tasks.make_task(config, train_input.info)
  model = make_model(config.model, task)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
  preemption.check("data and model setup")
  manager = checkpoint.make_manager(workdir, config)
  writer = None
  try:
    changed = _claim_workdir(config, workdir, manager)
    setup = state_lib.setup_state(config, model, tx, task, mesh, rules, manager, say=say)
    if setup.data_state is not None:
      train_input.set_state(setup.data_state)
    _record_start(config, workdir, setup, changed)
    say(start_line(config, mesh, setup, workdir))
    preemption.check("state setup")
    train_fn, eval_fn = make_steps(config, model, tx, task, setup.shardings, mesh)
    initial_step = int(jax.device_get(setup.state["step"]))
    first_batch = None
    if initial_step < config.total_steps:
      first_batch = sharding.to_global(next(train_input), sharding.batch_sharding(mesh))
      say("compiling the train step…")
      with sharding.step_context(mesh, rules):
        train_fn, seconds = compile_train_step(train_fn, setup.state, first_batch)
      say(f"compiled in {seconds:.1f} s")
      preemption.check("compilation")
    writer = metrics.MetricWriter(workdir, total_steps=config.total_steps,
                                  initial_step=initial_step,
                                  progress_bar=config.get("progress_bar", True))
    info = train_input.info
    step_flops = flops.training_flops(model, config.batch_size, info.modality, seq_len=info.seq_len,
                                      channels=(info.image_shape or (0, 0, 3))[2])
    runner = loop.TrainLoop(config, task, writer, schedule, manager, mesh, initial_step,
                            utilization=profiler.Utilization(step_flops),
                            step_profiler=profiler.StepProfiler(
                                workdir, config.get("profile_start_step", 0),
                                config.get("profile_num_steps", 0)))
    with sharding.step_context(mesh, rules):
      try:
        last_eval, step = runner.run(setup.state, train_fn, eval_fn, train_input, eval_input,
                                     preemption, first_batch)
      finally:
        runner.step_profiler.close()   # a trace window cut short by the end or an error
    writer.close()
    writer = None
    say(end_line(step, last_eval, workdir))
    return last_eval
  finally:
    manager.wait_until_finished()   # a pending async save completes (or never appears)
    manager.close()
    if writer is not None:
      writer.close()
