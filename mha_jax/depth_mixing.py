"""Cross-layer mixing over a carried history of earlier outputs (attention over depth).

Two published remedies read every earlier layer's output, not just the running sum:

- Attention Residuals (Kimi Team, Moonshot AI, 2026, "Attention Residuals", arXiv
  2603.15031), the "Full AttnRes" form: the input of each sublayer is
  h = Σ_i softmax_i(w · RMSNorm(v_i)) v_i over v_0 = the embedding and v_i = every
  earlier sublayer's output f_i(h_i) (attention and MLP each count), with w a learned
  pseudo-query per sublayer, initialised at 0 (a uniform average at init). There is
  no additive skip: the depth softmax replaces it.
- DenseFormer (Pagliardini et al., 2024, "DenseFormer: Enhancing Information Flow in
  Transformers via Depth Weighted Averaging", epfml/DenseFormer): after block l,
  x ← Σ_{j ≤ l} a_{l,j} x_j over x_0 = the embedding and x_j = block j's output;
  a_l is learned and starts as the identity (a_{l,l} = 1, the rest 0).

Both carry a history buffer [slots, B, T, D] through the layer scan, written at a
slot index with dynamic_update_slice; unwritten slots are zero and masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Slots of the carried history, per kind: the embedding plus what each layer adds.
SLOTS_PER_LAYER = {"attention_residuals": 2, "denseformer": 1}


def history_slots(kind, num_layers):
  """Entries of the history buffer `kind` carries (0 for kinds that carry none)."""
  per_layer = SLOTS_PER_LAYER.get(kind)
  return 0 if per_layer is None else 1 + per_layer * num_layers


def record(history_HxBxTxD, x_BxTxD, slot):
  """The history with entry `slot` (a traced int) replaced by x."""
  return jax.lax.dynamic_update_slice(history_HxBxTxD, x_BxTxD[None].astype(history_HxBxTxD.dtype),
                                      (slot, 0, 0, 0))


def depth_attention(history_HxBxTxD, filled, query_D, key_scale_D, eps):
  """AttnRes: Σ_i α_i v_i over the first `filled` entries, α = softmax_i(w · k_i),
  k_i = RMSNorm(v_i) with a learned scale; per token, in float32."""
  values = history_HxBxTxD.astype(jnp.float32)
  keys = values * jax.lax.rsqrt(jnp.mean(values ** 2, -1, keepdims=True) + eps)
  logits_HxBxT = jnp.einsum("hbtd,d->hbt", keys * key_scale_D.astype(jnp.float32),
                            query_D.astype(jnp.float32))
  written_H = jnp.arange(history_HxBxTxD.shape[0]) < filled
  weights_HxBxT = jax.nn.softmax(jnp.where(written_H[:, None, None], logits_HxBxT, -jnp.inf),
                                 axis=0)
  mixed = jnp.einsum("hbt,hbtd->btd", weights_HxBxT, values)
  return mixed.astype(history_HxBxTxD.dtype)


def dwa_weights(delta_H, filled):
  """DenseFormer's a_l over the first `filled` entries: the identity (1 on the newest
  entry, `filled` − 1) plus the learned δ (init 0), zero on unwritten entries. Writing
  a = e + δ rather than initialising a = e lets one scanned parameter shape serve
  every layer; the gradient is the same."""
  slots = jnp.arange(delta_H.shape[0])
  identity = (slots == filled - 1).astype(delta_H.dtype)
  return jnp.where(slots < filled, identity + delta_H, 0.0)


def depth_weighted_average(history_HxBxTxD, weights_H):
  """Σ_j a_j x_j over the history."""
  return jnp.tensordot(weights_H.astype(history_HxBxTxD.dtype), history_HxBxTxD, 1)
