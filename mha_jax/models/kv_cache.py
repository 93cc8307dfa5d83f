"""Cached decoding's keys and values: the fixed-size "cache" collection each
attention layer writes (used by `layers.SelfAttention` under `decode`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cached_keys_values(module, k_BxTxNxD, v_BxTxNxD, mask):
  """Cached decoding: write this call's T keys/values into the layer's fixed-size
  "cache" collection at its index; return all S cached keys/values and `mask`
  ([B|1, 1, T|1, S]) and'ed with causality by cache slot.

  Each new query row of H is rebuilt from these keys, so MHA needs no more cache
  than standard attention. The cache's size S is the length the model was
  initialised with (see mha_jax.decode.init_cache); writes past it are the caller's
  to prevent.
  """
  # Named apart from the "key"/"value" projections, which own those names.
  key = module.variable("cache", "cached_key", jnp.zeros, k_BxTxNxD.shape, k_BxTxNxD.dtype)
  value = module.variable("cache", "cached_value", jnp.zeros, v_BxTxNxD.shape, v_BxTxNxD.dtype)
  index = module.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
  start, length, size = index.value, k_BxTxNxD.shape[1], key.value.shape[1]
  key.value = jax.lax.dynamic_update_slice(key.value, k_BxTxNxD.astype(key.value.dtype),
                                           (0, start, 0, 0))
  value.value = jax.lax.dynamic_update_slice(value.value, v_BxTxNxD.astype(value.value.dtype),
                                             (0, start, 0, 0))
  index.value = start + length
  causal_TxS = jnp.arange(size)[None, :] <= (start + jnp.arange(length))[:, None]
  mask = causal_TxS[None, None] if mask is None else mask & causal_TxS
  return key.value, value.value, mask
