"""Multi-query associative recall: a sequence task that needs nothing downloaded.

Why synthetic: no time-series or audio set ships inside the installed packages,
and the small series that other packages bundle (statsmodels' sunspots: 309 yearly
values; co2: 2,284 weekly) are too short to train a transformer on with an error
bar over seeds. Recall is also the task a Hopfield network is *for*: store pairs,
retrieve a value from its key.

One example (P = seq_len // 4 pairs, distinct keys, values drawn with repeats):

    tokens  = BOS k_1 v_1 … k_P v_P | q_1 a_1 … q_P a_P        (4P + 1 tokens)
    inputs  = tokens[:-1], targets = tokens[1:]                 (seq_len = 4P each)
    q_1…q_P = the keys in a random order, a_i = the value stored with q_i

Only the answers are scored (`loss_mask` = 1 where the target is an a_i), so
accuracy is the fraction of answers recalled; chance is 1 / num_values. Token ids:
BOS = 0, keys 1…num_keys, values num_keys + 1 … num_keys + num_values.
"""

from __future__ import annotations

import numpy as np

BOS = 0


def num_pairs(seq_len, num_keys):
  """P = seq_len // 4, checked against what an example needs."""
  if seq_len < 4 or seq_len % 4:
    raise ValueError(f"associative_recall: seq_len={seq_len}; allowed: a multiple of 4 "
                     "(BOS, P key-value pairs, P queries with their answers)")
  pairs = seq_len // 4
  if pairs > num_keys:
    raise ValueError(f"associative_recall: seq_len={seq_len} needs {pairs} distinct keys; "
                     f"num_keys={num_keys} (allowed: num_keys ≥ seq_len // 4)")
  return pairs


def vocab_size(num_keys, num_values):
  return 1 + num_keys + num_values


def example(rng, seq_len, num_keys, num_values):
  """One example as {"inputs", "targets", "mask", "loss_mask"} (numpy, [seq_len])."""
  pairs = num_pairs(seq_len, num_keys)
  keys_P = 1 + rng.choice(num_keys, pairs, replace=False)
  values_P = 1 + num_keys + rng.integers(0, num_values, pairs)
  order_P = rng.permutation(pairs)
  stored = np.stack([keys_P, values_P], 1).reshape(-1)              # k_1 v_1 … k_P v_P
  queried = np.stack([keys_P[order_P], values_P[order_P]], 1).reshape(-1)
  tokens = np.concatenate([[BOS], stored, queried]).astype(np.int32)  # [4P + 1]
  loss_mask = np.zeros([seq_len], np.float32)
  loss_mask[2 * pairs + 1::2] = 1.0   # target j = tokens[j + 1]: the answers a_i
  return {"inputs": tokens[:-1], "targets": tokens[1:],
          "mask": np.ones([seq_len], np.float32), "loss_mask": loss_mask}
