"""Order, determinism, exact resume (on any process count) and per-process sharding of
`make_input`."""

import json

import numpy as np
import pytest

from mha_jax import data
from mha_jax.data import pipeline


def index_split(num_examples):
  """Example i is {"index": i} plus a random draw, so tests see which examples came out."""
  info = pipeline.DatasetInfo(name="index", modality="image", num_examples=num_examples)
  def preprocess(i, rng):
    draw = rng.random() if rng is not None else 0.0
    return {"index": np.int64(i), "draw": np.float64(draw), "mask": np.float32(1)}
  return pipeline.Split(info=info, source=np.arange(num_examples), preprocess=preprocess)


def take(input_, n):
  return [next(input_) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def train_input(split, seed=0, batch=5, process_index=0, process_count=1):
  return pipeline.make_input(split, global_batch_size=batch, train=True, seed=seed,
                             process_index=process_index, process_count=process_count)


def test_train_epochs_are_permutations_with_a_new_order_each_epoch():
  epochs = np.concatenate([b["index"] for b in take(train_input(index_split(20)), 8)])
  first, second = epochs[:20], epochs[20:40]
  np.testing.assert_array_equal(np.sort(first), np.arange(20))
  np.testing.assert_array_equal(np.sort(second), np.arange(20))
  assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(20))


def test_same_seed_same_batches_other_seed_other_batches():
  split = index_split(50)
  assert_same(take(train_input(split, seed=3), 6), take(train_input(split, seed=3), 6))
  other = take(train_input(split, seed=4), 6)
  assert not np.array_equal(other[0]["index"], take(train_input(split, seed=3), 1)[0]["index"])


def test_resume_from_saved_state_continues_exactly():
  split = index_split(23)
  reference = take(train_input(split, seed=1), 12)
  interrupted = train_input(split, seed=1)
  take(interrupted, 7)
  state = json.loads(json.dumps(interrupted.get_state()))  # must survive a JSON checkpoint
  resumed = train_input(split, seed=1)
  resumed.set_state(state)
  assert_same(take(resumed, 5), reference[7:])


def test_resume_with_real_augmentation_and_mixup():
  config = data.default_data_config("mnist5k")
  config.update(dict(randaugment_layers=2, mixup_alpha=0.8, cutmix_alpha=1.0))
  build = lambda: data.build_input(config, split="train", global_batch_size=8, train=True,
                                   seed=7, process_index=0, process_count=1)
  reference = take(build(), 5)
  interrupted = build()
  take(interrupted, 2)
  resumed = build()
  resumed.set_state(interrupted.get_state())
  assert_same(take(resumed, 3), reference[2:])
  np.testing.assert_allclose(reference[0]["soft_label"].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("num_examples, processes, batch", [(37, 4, 8), (16, 2, 4), (5, 4, 4)])
def test_eval_shards_are_disjoint_cover_the_split_and_line_up(num_examples, processes, batch):
  seen, lengths = [], set()
  for p in range(processes):
    input_ = pipeline.make_input(index_split(num_examples), global_batch_size=batch, train=False,
                                 seed=0, process_index=p, process_count=processes)
    batches = list(input_)
    lengths.add(len(batches))
    for b in batches:
      assert b["index"].shape == (batch // processes,)
      seen.extend(b["index"][b["mask"] == 1].tolist())
    assert list(input_) and len(list(input_)) == len(batches)  # a second pass starts over
  assert len(lengths) == 1  # every process runs the same number of eval steps
  assert sorted(seen) == list(range(num_examples))  # each example exactly once


def test_train_shards_are_disjoint_and_cover_the_split():
  processes, per_epoch = 3, 10  # 30 examples, 10 per process, host batch 2
  shards = []
  for p in range(processes):
    input_ = train_input(index_split(30), batch=6, process_index=p, process_count=processes)
    shards.append(set(np.concatenate([b["index"] for b in take(input_, per_epoch // 2)])))
  assert all(len(s) == per_epoch for s in shards)
  assert set().union(*shards) == set(range(30))


@pytest.mark.parametrize("processes", [2, 4])
def test_train_batches_are_one_global_stream_for_any_process_count(processes):
  split = index_split(23)
  single = take(train_input(split, seed=1, batch=8), 6)
  shards = [take(train_input(split, seed=1, batch=8, process_index=p, process_count=processes), 6)
            for p in range(processes)]
  joined = [{k: np.concatenate([shard[step][k] for shard in shards]) for k in single[0]}
            for step in range(6)]
  assert_same(joined, single)  # the per-example random draws included


def test_resume_on_another_process_count_continues_the_global_stream():
  split = index_split(23)
  reference = take(train_input(split, seed=1, batch=8), 9)
  interrupted = [train_input(split, seed=1, batch=8, process_index=p, process_count=2)
                 for p in range(2)]
  states = [(take(input_, 4), input_.get_state())[1] for input_ in interrupted]
  assert states[0] == states[1]  # one global position
  resumed = train_input(split, seed=1, batch=8)
  resumed.set_state(states[0])
  assert_same(take(resumed, 5), reference[4:])


def test_batch_size_must_divide_among_processes():
  with pytest.raises(ValueError, match="divisible"):
    train_input(index_split(10), batch=5, process_index=0, process_count=2)


def test_unknown_dataset_lists_the_allowed_names():
  with pytest.raises(ValueError, match="allowed: .*mnist5k"):
    data.default_data_config("mnist")


def test_read_threads_do_not_change_the_batches():
  split = index_split(40)
  build = lambda threads: pipeline.make_input(split, global_batch_size=4, train=True, seed=2,
                                              process_index=0, process_count=1,
                                              read_threads=threads, prefetch_batches=threads)
  assert_same(take(build(0), 12), take(build(3), 12))
