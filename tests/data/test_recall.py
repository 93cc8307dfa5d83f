"""Associative recall (RESULTS.md row g): every answer is the value stored with its
query key, only the answers are scored, and the scoring reaches the loss."""

import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import data
from mha_jax.data import recall
from mha_jax.train import tasks


def batch_of(split="train", batch_size=8, seq_len=16, **fields):
  config = data.default_data_config("associative_recall", seq_len=seq_len, read_threads=0,
                                    **fields)
  input_ = data.build_input(config, split=split, global_batch_size=batch_size, train=False,
                            seed=0, process_index=0, process_count=1)
  return input_.info, next(input_)


def test_every_scored_target_is_the_value_stored_with_the_query_key():
  info, batch = batch_of(seq_len=24, num_keys=10, num_values=7)
  assert info.vocab_size == 1 + 10 + 7 and info.seq_len == 24
  pairs = 24 // 4
  for inputs, targets, loss_mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
    tokens = np.concatenate([inputs, targets[-1:]])
    assert tokens[0] == recall.BOS
    stored_keys, stored_values = tokens[1:2 * pairs:2], tokens[2:2 * pairs + 1:2]
    assert len(set(stored_keys)) == pairs and np.all((1 <= stored_keys) & (stored_keys <= 10))
    assert np.all((11 <= stored_values) & (stored_values <= 17))
    memory = dict(zip(stored_keys, stored_values))
    scored = np.flatnonzero(loss_mask)
    assert len(scored) == pairs
    for j in scored:   # the input at j is a query key, the target its stored value
      assert targets[j] == memory[inputs[j]]
    assert sorted(inputs[scored]) == sorted(stored_keys)   # every key asked once


def test_splits_differ_and_examples_are_reproducible():
  _, train_a = batch_of("train")
  _, train_b = batch_of("train")
  _, validation = batch_of("validation")
  np.testing.assert_array_equal(train_a["inputs"], train_b["inputs"])
  assert not np.array_equal(train_a["inputs"], validation["inputs"])


@pytest.mark.parametrize("fields, message", [
    (dict(seq_len=18), "seq_len=18; allowed: a multiple of 4"),
    (dict(seq_len=32, num_keys=4), "num_keys=4"),
])
def test_bad_lengths_fail_naming_the_value(fields, message):
  with pytest.raises(ValueError, match=message):
    batch_of(**fields)


def test_loss_and_accuracy_count_only_the_scored_targets():
  info, batch = batch_of(batch_size=4)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, info.seq_len, info.vocab_size)).astype(np.float32)
  task = tasks.LanguageModelling(info)
  loss, correct, weight = task.weighted_losses(
      jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()}, train=True)
  # Independent: NumPy log-softmax at the answer positions only.
  rows, cols = np.nonzero(batch["loss_mask"])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -log_probs[rows, cols, batch["targets"][rows, cols]]
  assert float(weight.sum()) == len(rows)
  np.testing.assert_allclose(float(loss.sum()), expected.sum(), rtol=1e-5)
  hits = logits[rows, cols].argmax(-1) == batch["targets"][rows, cols]
  assert float(correct.sum()) == hits.sum()
