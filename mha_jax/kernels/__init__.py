"""How an MHA layer is computed (`attention.implementation` for kind="hopfield").

    naive       attention.hopfield_attention: H_n materialised in float32 and carried.
    factorized  factorized.py: stacked features Q̃, K̃ carried instead of H, one
                dot-product attention per layer; `hidden_window` W keeps W layers.
    fused       fused.py: one Pallas kernel per layer that reads H_{n−1}, writes
                H_n, and never stores the attention probabilities.
    layerwise   layerwise.py + layerwise_stack.py: each layer's q, k stored once
                ([L, B, N, T, D]) and a flash kernel over Σ_l w_l q_l k_lᵀ (layer
                n reads its n+1 live slots); the stack runs a collect pass, then
                the differentiated replay pass, whose gradients for earlier
                layers accumulate in place in one [L, …] sink per q and k.
    cudnn       bias_attention.py: H_n materialised, attention by cuDNN's flash
                kernel with bias α′H_{n−1} (GPU; the probabilities are never stored).
    auto        `resolve`: layerwise when the stored features are wider than H,
                i.e. T > W·D (W = window or depth, D = head dim), or when the
                materialised H of all layers would take more than its memory
                budget per device (`hidden_budget`), else naive; naive for a
                random H_0 (h0="noise"), which has no factorised form, and for
                cached decoding (`choose` says which and why).

Standard attention's `implementation="flash"` is `flash_attention` (flash.py).

The models call `initial_state`, `hopfield_attention` and `hidden_state` with
their AttentionConfig; this package knows only mha_jax.attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mha_jax.kernels import bias_attention, factorized, fused, layerwise_stack
from mha_jax.kernels.flash import flash_attention  # noqa: F401 — standard "flash"


def window_slots(att, num_layers):
  """How many layers' features the factorised carry keeps."""
  window = att.hidden_window
  return num_layers if not window or window >= num_layers else window


def hidden_budget(att):
  """Bytes per device the materialised H may take under `auto`: the configured
  `hidden_budget_bytes`, else a quarter of the device's memory where JAX reports it
  (GPU, TPU; the rest holds parameters, optimizer state and activations); 0 = no limit
  (CPU reports none). The AOT tool sets the target chip's quarter explicitly."""
  if att.hidden_budget_bytes:
    return att.hidden_budget_bytes
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit", 0) // 4


def hidden_bytes_per_device(num_layers, batch, length, num_heads):
  """The float32 H [B, N, T, T] the scan saves for every layer, shared by the devices
  of the mesh the step is traced under (batch and heads are what it shards)."""
  mesh = jax.sharding.get_abstract_mesh()
  return num_layers * batch * num_heads * length * length * 4 // (1 if mesh.empty else mesh.size)


def choose(att, num_layers, batch, length, num_heads, head_dim, decode=False):
  """(implementation, why): the rule `resolve` applies, with its reason in words."""
  if att.kind != "hopfield":
    return "naive", f"kind {att.kind!r} has one implementation here"
  if att.implementation in ("layerwise", "cudnn") and decode:
    return "naive", f"{att.implementation} does not decode one token at a time"
  if att.implementation != "auto":
    return att.implementation, "configured"
  if att.h0 == "noise":
    return "naive", "a random H_0 (h0='noise') has no factorised form"
  if decode:
    return "naive", "cached decoding carries H's new rows"
  width = window_slots(att, num_layers) * head_dim
  if length > width:
    return "layerwise", f"T={length} > W·D={width}: the carried q, k are smaller than H"
  hidden, budget = hidden_bytes_per_device(num_layers, batch, length, num_heads), hidden_budget(att)
  if budget and hidden > budget:
    return "layerwise", (f"the saved H needs {hidden / 2**30:.2f} GiB per device, over its "
                         f"budget of {budget / 2**30:.2f} GiB")
  within = (f"; the saved H ({hidden / 2**30:.2f} GiB per device) is within its budget of "
            f"{budget / 2**30:.2f} GiB" if budget else "")
  return "naive", f"T={length} <= W·D={width}: H is no larger than the carried q, k{within}"


def resolve(att, num_layers, batch, length, num_heads, head_dim, decode=False):
  """The implementation `auto` stands for at this shape (others map to themselves;
  layerwise, a two-pass stack, and cudnn decode one token at a time as naive)."""
  return choose(att, num_layers, batch, length, num_heads, head_dim, decode)[0]


def initial_state(att, num_layers, batch, length, num_heads, head_dim, dtype, decode=False,
                  replay=False):
  """The factorised carry or the layer-wise buffers (sinks with `replay`) before
  layer 1, or None where the layers carry H."""
  impl = resolve(att, num_layers, batch, length, num_heads, head_dim, decode)
  if impl == "layerwise":
    return layerwise_stack.initial_state(batch, length, num_heads, head_dim, num_layers, dtype,
                                         replay=replay, keep_outputs=att.layerwise_keep_outputs)
  if impl != "factorized":
    return None
  return factorized.initial_state(batch, length, num_heads, head_dim,
                                  window_slots(att, num_layers), dtype)


def hopfield_attention(att, num_layers, q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state, *, restart,
                       mask, final_layers=None, causal=False):
  """One MHA layer by the configured implementation: (out [B, T, N, D], next state).
  layerwise: the collect pass, or with `final_layers` (its buffers) the replay;
  `causal` (the mask includes the causal one) lets its kernels skip those tiles."""
  impl = resolve(att, num_layers, *q_BxTxNxD.shape)
  if impl == "layerwise":
    return _layerwise(att, num_layers, q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state, att.chain_start,
                      mask, final_layers, causal)
  common = dict(alpha_hidden=state.get("alpha_hidden", att.alpha_hidden), restart=restart,
                h0=att.chain_start, mask=mask, scale=att.score_scale)
  if impl == "factorized":
    return factorized.factorized_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state,
                                                    **common)
  if impl == "cudnn":
    out, h = bias_attention.bias_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD,
                                                    state["hidden"], **common)
    return out, {"hidden": h}
  out, h = fused.fused_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, state["hidden"],
                                          hidden_dtype=jnp.dtype(att.hidden_dtype), **common)
  return out, {"hidden": h}


def _layerwise(att, num_layers, q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, h0, mask,
               final_layers, causal):
  scale = q_BxTxNxD.shape[-1] ** -0.5 if att.score_scale is None else att.score_scale
  structure = dict(reset_every=att.reset_every, window=window_slots(att, num_layers))
  weights_LxL = layerwise_stack.weight_matrix(
      state.get("alpha_hidden", att.alpha_hidden), num_layers, h0=h0, scale=scale, **structure)
  slot_ranges_Lx2 = layerwise_stack.live_slots(num_layers, **structure)
  if final_layers is None:
    return layerwise_stack.collect_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state,
                                             weights_LxL, slot_ranges_Lx2, mask=mask,
                                             causal=causal)
  return layerwise_stack.replay_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, final_layers,
                                          weights_LxL, slot_ranges_Lx2, mask=mask,
                                          causal=causal)


def hidden_state(state, length):
  """H_n of a layer's state over its `length` tokens, built from the factorised
  features or the layer-wise buffers if need be; None for attention without a
  hidden state."""
  if "hidden" in state:
    return state["hidden"]
  if "hidden_weights" in state:
    return layerwise_stack.hidden_state(state, length)
  if all(key in state for key in factorized.STATE_KEYS):
    return factorized.hidden_state(state)
  return None
