"""The PyTorch half of a training-parity run: `torch.optim.AdamW` set up to take the
same steps as `mha_jax.train.optim.make_optimizer` (needs torch).

What has to be aligned by hand (see experiments/train_parity.py for the full list):
- weight decay: optax masks leaves by their mha_jax name (`optim.decay_params`,
  kernels only by default); torch decays whole parameter groups. `decay_groups`
  finds each torch tensor's mha_jax leaves through the module's own to-mha_jax
  mapping and splits the parameters into a decayed and a non-decayed group.
- clipping: `torch.nn.utils.clip_grad_norm_` scales by max/(norm + 1e-6) whenever
  called; optax's `clip_by_global_norm` scales by max/norm and only when norm > max.
  `clip_by_global_norm_` is optax's rule.
- learning rate: the caller passes the schedule's value for the step being taken
  (optax evaluates the schedule at the pre-increment count, so step 0 uses
  schedule(0), 0 after a warmup from 0).
AdamW itself needs no change: both frameworks compute
m̂ / (√v̂ + eps) with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), eps outside the square root and
after bias correction, and decoupled decay θ ← θ − lr·(update + wd·θ).
"""

from __future__ import annotations

import torch


def leaf_paths(named_tensors, to_flat):
  """{torch name: set of mha_jax paths its values land in}, found by pushing
  markers (tensor i filled with i + 1) through `to_flat` ({torch name: tensor} →
  {mha_jax path: array}); handles fused, split, transposed and tied tensors."""
  names = list(named_tensors)
  markers = {name: torch.full(named_tensors[name].shape, float(i + 1))
             for i, name in enumerate(names)}
  paths = {name: set() for name in names}
  for path, value in to_flat(markers).items():
    for index in {int(v) for v in value.reshape(-1).tolist()}:
      paths[names[index - 1]].add(path)
  missing = [name for name, found in paths.items() if not found]
  if missing:
    raise ValueError(f"torch parameters with no mha_jax counterpart: {missing[:4]}")
  return paths


def decay_groups(module, to_flat, decay_names, weight_decay):
  """AdamW parameter groups: decayed iff every mha_jax leaf the tensor maps to has
  its last path component in decay_names (optax's mask in mha_jax.train.optim)."""
  params = dict(module.named_parameters())
  decayed, plain = [], []
  for name, paths in leaf_paths(params, to_flat).items():
    flags = {path.rsplit("/", 1)[-1] in decay_names for path in paths}
    if len(flags) > 1:
      raise ValueError(f"torch parameter {name!r} holds both decayed and non-decayed "
                       f"mha_jax leaves {sorted(paths)}: one weight-decay group cannot match")
    (decayed if flags.pop() else plain).append(params[name])
  return [dict(params=decayed, weight_decay=weight_decay), dict(params=plain, weight_decay=0.0)]


@torch.no_grad()
def clip_by_global_norm_(parameters, max_norm):
  """optax.clip_by_global_norm in place: g ← g / ‖g‖ · max_norm when ‖g‖ ≥ max_norm.
  Returns the norm before clipping."""
  grads = [p.grad for p in parameters if p.grad is not None]
  norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
  if norm >= max_norm:
    for g in grads:
      g.div_(norm).mul_(max_norm)
  return float(norm)


class MatchedAdamW:
  """AdamW + weight-decay mask + global-norm clipping as `make_optimizer(optim, ...)`
  builds them; `step(lr)` after `loss.backward()`."""

  def __init__(self, module, to_flat, optim):
    if optim.get("trainable"):
      raise ValueError(f"optim.trainable={optim.trainable!r}: frozen parameters are not "
                       f"mirrored on the PyTorch side")
    groups = decay_groups(module, to_flat, frozenset(optim.decay_params), optim.weight_decay)
    self.parameters = [p for group in groups for p in group["params"]]
    self.grad_clip = optim.grad_clip
    # foreach=False: the plain per-tensor loop, whose order of operations is documented.
    self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(optim.b1, optim.b2),
                                       eps=optim.eps, foreach=False)

  def step(self, lr):
    """Clip, then one AdamW step at learning rate lr; returns the unclipped grad norm."""
    norm = clip_by_global_norm_(self.parameters, self.grad_clip) if self.grad_clip else None
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    self.optimizer.step()
    self.optimizer.zero_grad()
    return norm
