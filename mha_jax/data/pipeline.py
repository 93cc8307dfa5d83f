"""grain plumbing shared by every dataset: a random-access source of examples in,
host-local batches with a checkpointable position out.

Train: one global stream for all processes: the split shuffled with a new
permutation each epoch, repeated forever, each example augmented with an rng
derived from (seed, its position in the stream), cut into global batches. Process
p of P reads (randomly accessed) only rows [p·B, (p+1)·B) of each global batch,
B = global_batch_size / P. The position is the number of global batches drawn,
the same on every process and for any P, so a run resumes exactly on another
process count. Eval: process p reads examples p, p+P, …, in order, padded with
masked examples so every process runs the same number of full batches (SPMD eval
steps must line up).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np


@dataclasses.dataclass
class DatasetInfo:
  """What a model and a train loop need to know about a dataset split."""
  name: str
  modality: str  # "image" | "text"
  num_examples: int  # examples in the whole split (all processes), before padding
  num_classes: int | None = None  # images
  image_shape: tuple[int, int, int] | None = None  # images: (H, W, C) after preprocessing
  vocab_size: int | None = None  # text
  seq_len: int | None = None  # text
  # Text: original tokens (e.g. WikiText words) over model tokens of the split (packing.perplexity)
  original_tokens_per_token: float | None = None
  eos_id: int | None = None  # text


@dataclasses.dataclass
class Split:
  """A dataset split before batching; built by each dataset family."""
  info: DatasetInfo
  source: Sequence[Any]  # random access: len() and [i]
  # (example, rng) -> dict of numpy arrays; rng is None at eval (no augmentation).
  preprocess: Callable[[Any, np.random.Generator | None], dict]
  # (batch, rng) -> batch, after batching at train time (mixup/cutmix), or None.
  batch_transform: Callable[[dict, np.random.Generator], dict] | None = None


class Input:
  """An iterable of host-local batches with an exactly resumable position.

  `for batch in input_:` draws from one iterator that `get_state`/`set_state`
  describe. An eval pass ends with StopIteration; the next loop starts a new pass.
  """

  def __init__(self, info: DatasetInfo, dataset: grain.IterDataset, num_batches: int | None):
    self.info = info
    self.num_batches = num_batches  # per pass and process; None = infinite (train)
    self._dataset = dataset
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return next(self._current())
    except StopIteration:
      self._iterator = None  # the next loop starts a new (eval) pass
      raise

  def _current(self):
    if self._iterator is None:
      self._iterator = iter(self._dataset)
    return self._iterator

  def get_state(self) -> dict:
    """JSON-serialisable position; a fresh Input with `set_state(state)` continues from it.

    Train: {"next_index": global batches drawn}, equal on every process and
    valid for any process count (the same seed and global batch size).
    """
    return self._current().get_state()

  def set_state(self, state: dict) -> None:
    self._iterator = iter(self._dataset)
    self._iterator.set_state(state)


def make_input(split: Split, *, global_batch_size, train, seed, process_index=None,
               process_count=None, read_threads=4, prefetch_batches=4):
  """Split → Input (see the module docstring for the train and eval orders).

  process_index/count default to jax.process_index()/process_count().
  `read_threads` threads build whole batches ahead, up to `prefetch_batches`
  (grain's defaults, 16 and 500, would hold hundreds of ImageNet batches); the
  batches and the state do not depend on either.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  if len(split.source) == 0:
    raise ValueError(f"{split.info.name}: the split has no examples")
  batch_size = global_batch_size // process_count
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
  if train:
    ds = (grain.MapDataset.range(len(split.source)).seed(int(seed) % 2**32).shuffle()
          .repeat(None)
          .random_map(lambda i, rng: split.preprocess(split.source[i], rng))
          .batch(batch_size, drop_remainder=True)
          [process_index::process_count])  # this process's rows of every global batch
    if split.batch_transform is not None:
      # `.seed` above derives a distinct stream for each random transformation.
      ds = ds.random_map(split.batch_transform)
    return Input(split.info, ds.to_iter_dataset(read_options), None)
  # Every process runs the same number of batches: the longest shard sets it.
  shard_indices = np.arange(process_index, len(split.source), process_count)
  longest_shard = -(-len(split.source) // process_count)
  num_batches = -(-longest_shard // batch_size)
  padded = np.full(num_batches * batch_size, -1, np.int64)
  padded[:len(shard_indices)] = shard_indices
  pad_example = _masked(split.preprocess(split.source[0], None))
  ds = (grain.MapDataset.source(padded)
        .map(lambda i: pad_example if i < 0 else split.preprocess(split.source[int(i)], None))
        .batch(batch_size))
  return Input(split.info, ds.to_iter_dataset(read_options), num_batches)


def _masked(example):
  """A padding example: zeros everywhere, mask 0, so it counts in no metric."""
  return {k: np.zeros_like(v) for k, v in example.items()}
