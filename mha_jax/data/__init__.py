"""Input pipelines: `default_data_config(name)` gives every field of config.data,
`build_input(config.data, split=..., ...)` gives an `Input` of host-local numpy
batches with a resumable position. See README.md here for the datasets.

Image batches: {"image": float32 [b, H, W, C], "label": int32 [b], "mask": float32 [b]}
(+ "soft_label": float32 [b, classes] at train time with mixup/cutmix on).
Text batches: {"inputs", "targets": int32 [b, T], "mask": float32 [b, T]}.
"""

from __future__ import annotations

import ml_collections

from mha_jax.data import registry
from mha_jax.data.offline import MissingDataError
from mha_jax.data.pipeline import DatasetInfo, Input, make_input
from mha_jax.data.text import perplexity_per_original_token

DATASETS = tuple(sorted(registry.DATASETS))

__all__ = ["DATASETS", "DatasetInfo", "Input", "MissingDataError", "build_input",
           "default_data_config", "perplexity_per_original_token"]


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Every field of config.data for dataset `name`, with its defaults."""
  return registry.default_config(name)


def build_input(data_config, *, split: str, global_batch_size: int, train: bool, seed: int,
                process_index: int | None = None, process_count: int | None = None) -> Input:
  """Batches of `split` for this process (global_batch_size // process_count rows).

  train=True: infinite, shuffled by `seed`, a new order each epoch. train=False:
  one ordered pass over this process's examples, the last batch padded with
  mask 0. process_index/count default to jax.process_index()/process_count().
  """
  split_data = registry.build_split(data_config, split)
  return make_input(split_data, global_batch_size=global_batch_size, train=train, seed=seed,
                    process_index=process_index, process_count=process_count,
                    read_threads=data_config.read_threads,
                    prefetch_batches=data_config.prefetch_batches)
