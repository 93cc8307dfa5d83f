"""Training system: configs → jit-sharded loop → orbax checkpoints and metrics.

The names below load on first use, so that `mha_jax.main` can install its signal
handlers (mha_jax.train.preemption) before JAX is imported.
"""

import importlib

_EXPORTS = {"ConfigError": "mha_jax.train.validation",
            "train_and_evaluate": "mha_jax.train.train"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mha_jax.train' has no attribute {name!r}")
  return getattr(importlib.import_module(_EXPORTS[name]), name)
