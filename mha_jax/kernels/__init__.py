"""How an MHA layer is computed (`attention.implementation` for kind="hopfield").

    naive       attention.hopfield_attention: H_n materialised in float32 and carried.
    factorized  factorized.py: stacked features Q̃, K̃ carried instead of H, one
                dot-product attention per layer; `hidden_window` W keeps W layers.
    fused       fused.py: one Pallas kernel per layer that reads H_{n−1}, writes
                H_n, and never stores the attention probabilities.
    auto        `resolve`: factorized when the carried features are smaller than
                H, i.e. T > W·D (W = window or depth, D = head dim), else naive;
                naive for a random H_0 (h0="noise"), which has no factorised form.

The models call `initial_state`, `hopfield_attention` and `hidden_state` with
their AttentionConfig; this package knows only mha_jax.attention.
"""

from __future__ import annotations

import jax.numpy as jnp

from mha_jax.kernels import factorized, fused

def window_slots(att, num_layers):
  """How many layers' features the factorised carry keeps."""
  window = att.hidden_window
  return num_layers if not window or window >= num_layers else window


def resolve(att, num_layers, length, head_dim):
  """The implementation `auto` stands for at this shape (others map to themselves)."""
  if att.kind != "hopfield":
    return "naive"
  if att.implementation != "auto":
    return att.implementation
  if att.h0 == "noise" or length <= window_slots(att, num_layers) * head_dim:
    return "naive"
  return "factorized"


def initial_state(att, num_layers, batch, length, num_heads, head_dim, dtype):
  """The factorised carry before layer 1, or None where the layers carry H."""
  if resolve(att, num_layers, length, head_dim) != "factorized":
    return None
  return factorized.initial_state(batch, length, num_heads, head_dim,
                                  window_slots(att, num_layers), dtype)


def hopfield_attention(att, num_layers, q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state, *, restart,
                       mask):
  """One MHA layer by the configured implementation: (out [B, T, N, D], next state)."""
  impl = resolve(att, num_layers, q_BxTxNxD.shape[1], q_BxTxNxD.shape[-1])
  common = dict(alpha_hidden=state.get("alpha_hidden", att.alpha_hidden), restart=restart,
                h0=att.chain_start, mask=mask, scale=att.score_scale)
  if impl == "factorized":
    return factorized.factorized_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state,
                                                    **common)
  out, h = fused.fused_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state["hidden"],
                                          hidden_dtype=jnp.dtype(att.hidden_dtype), **common)
  return out, {"hidden": h}


def hidden_state(state):
  """H_n of a layer's state, built from the factorised features if need be; None
  for attention without a hidden state."""
  if "hidden" in state:
    return state["hidden"]
  if all(key in state for key in factorized.STATE_KEYS):
    return factorized.hidden_state(state)
  return None
