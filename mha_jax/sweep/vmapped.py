"""K training runs of one model in ONE compiled step: `jax.vmap` of the train
package's own `train_step` over the per-run state (params, optimizer moments,
step, rng), the per-run batch, and the per-run α / α′.

What may differ between the K runs is what the compiled computation does not
depend on structurally: the seed (init, dropout and data order) and, for MHA,
the scalars α and α′, which reach `LayerStack` as a traced
`layers.OVERRIDES` collection instead of the frozen config. Depth, kind,
residual form or h0 change the program: those are separate groups.

Run i is `train_step` applied alone to a model configured with α_i, α′_i and
seed_i only up to float32 rounding, and that rounding is not fixed: the compiled
step's arithmetic depends on the group size K (a run is bitwise the same whatever
its mates' α, α′, seeds or its position in a group of the same K, but not across
K). A step differs by ~1e-7; Adam (g/√v on near-zero gradients) and the
training's own chaos amplify it, so over a full schedule one setting's final
metric moves like a change of seed: experiments/group_rounding.py measures it
(sweeps/group_rounding/rounding.json: ViT depth 6, convex α = α′ = 0.5, seed 2,
400 steps, final accuracy between groups of K = 1, 2, 4 — see RESULTS.md).
tests/sweep/test_vmapped.py checks the first 3 steps to 1e-5 with the default
optimizer, and bitwise equality across mates at a fixed K. A sweep therefore
stores one result per cell (grid.ResultStore) and never trains a cell twice.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mha_jax import analysis
from mha_jax.models import layers
from mha_jax.train import optim, state as state_lib, steps, tasks
from mha_jax.train import train as train_lib


@dataclasses.dataclass(frozen=True)
class RunSetting:
  """One member of a vmapped group; α, α′ None = the config's values."""
  seed: int
  alpha: float | None = None
  alpha_hidden: float | None = None


def stack_scope(params):
  """Name of the model's LayerStack (its params hold "layers" or "layers_0")."""
  for name, sub in params.items():
    if isinstance(sub, dict) and ("layers" in sub or "layers_0" in sub):
      return name
  raise ValueError(f"no layer stack among the model's modules {sorted(params)}")


@dataclasses.dataclass(frozen=True)
class WithOverrides:
  """A model whose `apply` adds α / α′ arrays as the stack's OVERRIDES collection;
  what `steps.train_step` and `steps.eval_step` see as `model`."""
  model: nn.Module
  scope: str
  overrides: dict

  def apply(self, variables, *args, **kwargs):
    return self.model.apply({**variables, layers.OVERRIDES: {self.scope: self.overrides}},
                            *args, **kwargs)


def _with(model, scope, overrides):
  return WithOverrides(model, scope, overrides) if overrides else model


def sweep_train_step(states, batches, overrides, *, model, scope, **step_kw):
  """[K]-stacked state, batch and overrides → [K]-stacked (state, metrics)."""
  def one(state, batch, run_overrides):
    return steps.train_step(state, batch, model=_with(model, scope, run_overrides), **step_kw)
  return jax.vmap(one)(states, batches, overrides)


def sweep_eval_step(params, batch, overrides, *, model, scope, **step_kw):
  """[K] params and overrides, one shared eval batch → [K] sums."""
  def one(run_params, run_overrides):
    return steps.eval_step(run_params, batch, model=_with(model, scope, run_overrides),
                           **step_kw)
  return jax.vmap(one)(params, overrides)


def stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_config(config, setting):
  """The single-run config that run `setting` of a vmapped group equals."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = setting.seed
  for name in ("alpha", "alpha_hidden"):
    if getattr(setting, name) is not None:
      config.model.attention[name] = getattr(setting, name)
  return config


class VmappedGroup:
  """Builds, initialises and trains the K runs of one group on the config's data.

  `config` is a normal training config; `settings` the K RunSettings. α / α′ may
  only vary for `attention.kind == "hopfield"` (elsewhere they mean nothing).
  """

  def __init__(self, config, settings):
    self.config, self.settings = config, list(settings)
    kind = config.model.get("attention", {}).get("kind", "standard")
    self.override_names = tuple(
        name for name in layers.OVERRIDABLE
        if any(getattr(s, name) is not None for s in self.settings))
    if self.override_names and kind != "hopfield":
      raise ValueError(f"α/α′ settings need attention.kind='hopfield', got {kind!r}")
    self.inputs = [train_lib.make_input(run_config(config, s), train=True)
                   for s in self.settings]
    self.info = self.inputs[0].info
    self.task = tasks.make_task(config, self.info)
    self.model = train_lib.make_model(config.model, self.task)
    self.tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    step_kw = dict(task=self.task)
    init = [nn.unbox(state_lib.init_fn(self.model, self.tx, self.task, s.seed)(
        jax.random.key(s.seed))) for s in self.settings]
    self.states = stack_trees(init)
    self.scope = stack_scope(init[0]["params"])
    self.overrides = {name: jnp.asarray(
        [getattr(s, name) if getattr(s, name) is not None
         else config.model.attention[name] for s in self.settings], jnp.float32)
        for name in self.override_names}
    self.train_fn = jax.jit(functools.partial(
        sweep_train_step, model=self.model, scope=self.scope,
        grad_accum_steps=config.grad_accum_steps, tx=self.tx, **step_kw), donate_argnums=(0,))
    self.eval_fn = jax.jit(functools.partial(
        sweep_eval_step, model=self.model, scope=self.scope, **step_kw))

  def next_batches(self):
    return stack_trees([jax.tree.map(jnp.asarray, next(i)) for i in self.inputs])

  def train(self, num_steps):
    """Trains every run `num_steps` steps; returns the [num_steps, K] losses."""
    losses = []
    for _ in range(num_steps):
      self.states, metrics = self.train_fn(self.states, self.next_batches(), self.overrides)
      losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses))

  def depth_profile(self):
    """Per run, after every layer: mean pairwise token cosine (raw and centred) and
    mean relative rank residual ‖X − 1x̄ᵀ‖_{1,∞}/‖X‖_{1,∞} over the unpadded
    sequences of the first eval batch — {measure: [K, L] lists}, the trained-network
    depth curves."""
    batch = next(iter(train_lib.make_input(self.config, train=False)))
    x, kwargs = self.task.model_inputs(jax.tree.map(jnp.asarray, batch))
    def stream(params, overrides):
      _, inter = _with(self.model, self.scope, overrides).apply(
          {"params": params}, x, train=False, return_intermediates=True, **kwargs)
      return inter["residual"]
    x_KxLxBxTxD = np.asarray(jax.jit(jax.vmap(stream))(self.states["params"], self.overrides))
    mask = np.asarray(batch["mask"]) > 0
    full_B = mask if mask.ndim == 1 else mask.all(-1)
    x_KxLxBxTxD = x_KxLxBxTxD[:, :, full_B]
    measures = {
        "cosine": lambda x: analysis.pairwise_token_cosine(x).mean(),
        "centred_cosine": lambda x: analysis.pairwise_token_cosine(x, centered=True).mean(),
        "rank_residual": lambda x: np.asarray(analysis.relative_rank_residual(x)).mean()}
    return {name: [[float(f(x_BxTxD)) for x_BxTxD in x_LxBxTxD] for x_LxBxTxD in x_KxLxBxTxD]
            for name, f in measures.items()}

  def evaluate(self, max_batches=-1):
    """Per-run eval summaries (the train package's), one list entry per run."""
    eval_input = train_lib.make_input(self.config, train=False)
    batches = eval_input if max_batches < 0 else itertools.islice(eval_input, max_batches)
    totals = None
    for batch in batches:
      sums = self.eval_fn(self.states["params"], jax.tree.map(jnp.asarray, batch),
                          self.overrides)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return [self.task.summarize(jax.tree.map(lambda a, k=k: a[k], totals), eval_input.info)
            for k in range(len(self.settings))]
