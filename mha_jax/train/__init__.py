"""Training system: configs → jit-sharded loop → orbax checkpoints and metrics."""

from mha_jax.train.sharding import ConfigError
from mha_jax.train.train import train_and_evaluate

__all__ = ["ConfigError", "train_and_evaluate"]
