"""Input pipelines: `default_data_config(name)` gives every field of config.data,
`build_input(config.data, split=..., ...)` gives an `Input` of host-local numpy
batches with a resumable position. `DATASETS` is the table of datasets (see
README.md here).

Image batches: {"image": float32 [b, H, W, C], "label": int32 [b], "mask": float32 [b]}
(+ "soft_label": float32 [b, classes] at train time with mixup/cutmix on).
Text batches: {"inputs", "targets": int32 [b, T], "mask": float32 [b, T]} (+ "loss_mask":
float32 [b, T] where only some targets are scored: associative_recall's answers).
"""

from __future__ import annotations

from mha_jax.data.datasets import DATASETS, Dataset
from mha_jax.data.datasets import default_config as default_data_config
from mha_jax.data.offline import MissingDataError
from mha_jax.data.packing import perplexity
from mha_jax.data.pipeline import DatasetInfo, Input, make_input
from mha_jax.data.sources import build_split, dataset_tokenizer

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "Input", "MissingDataError", "build_input",
           "dataset_tokenizer", "default_data_config", "perplexity"]


def build_input(data_config, *, split: str, global_batch_size: int, train: bool, seed: int,
                process_index: int | None = None, process_count: int | None = None) -> Input:
  """Batches of `split` for this process (global_batch_size // process_count rows).

  train=True: infinite, shuffled by `seed`, a new order each epoch, the same
  global batches for any process count. train=False: one ordered pass over this
  process's examples, the last batch padded with mask 0. process_index/count
  default to jax.process_index()/process_count().
  """
  return make_input(build_split(data_config, split), global_batch_size=global_batch_size,
                    train=train, seed=seed, process_index=process_index,
                    process_count=process_count, read_threads=data_config.read_threads,
                    prefetch_batches=data_config.prefetch_batches)
