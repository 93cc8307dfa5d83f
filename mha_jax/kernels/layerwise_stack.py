"""Exact MHA through a layer stack in O(L·T·D) memory: each layer's q_l, k_l stored
once, H never formed (implementation "layerwise").

Layer n attends with softmax(mask(Σ_{l≤n} w_{n,l} q_l k_lᵀ)) V_n (layerwise.py), so
it needs the queries and keys of the layers before it. Carrying them in an
[L, …] buffer through `nn.scan` is exact but costs L²·T·D under autodiff: the
scan saves its carry (or the kernel's inputs) at every layer. Instead the stack
runs twice:

  1. "collect": forward only; the carry's buffers [L, B, N, T, D] receive slot n
     at layer n. Their final values Q_f, K_f (stop_gradient) hold every layer's
     q and k, and slot l of the buffer at layer n equals Q_f[l] for l ≤ n.
  2. "replay": the differentiated pass. Q_f, K_f enter every layer as the same
     loop-invariant inputs (saved once, not per layer); slots l > n have
     w_{n,l} = 0 and add nothing. The gradient each layer sends to earlier
     layers' q_l, k_l travels in "sink" carries whose value is identically zero:

       sink_out = sink_in + onehot(n) ⊗ (q_n − stop_gradient(q_n))     (value: sink_in)

     In the backward pass the sink's cotangent at slot n holds Σ_{m>n} ∂L/∂q_n
     from the later layers; the layer's custom VJP adds its own dq_n and passes
     the slots l < n back in the sink.

Memory: Q_f, K_f, the two sinks and their cotangents, all O(L·T·D); compute: one
extra forward pass of the stack, and each layer's kernel walks all L slots.

Weights: H_n = Σ_l w_{n,l} s_l with the chain start r ≤ n (layer 1, or every
`reset_every` layers): w_{n,l} = (1−α′)α′^{n−l} for r < l ≤ n, w_{n,r} = c₀α′^{n−r}
(c₀ = 1−α′ for h0 "zeros", 1 for "first_scores"), 0 before r; a window W zeroes
l ≤ n−W (the bound of factorized.window_error_bound applies).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention
from mha_jax.kernels import layerwise

P = jax.sharding.PartitionSpec


def weight_matrix(alpha_hidden, num_layers, *, h0="zeros", reset_every=0, window=0,
                  scale=1.0):
  """w [L, L] float32 (× scale): H_n = Σ_l w[n, l] s_l. α′ may be traced."""
  alpha = jnp.asarray(alpha_hidden, jnp.float32)
  powers = [jnp.ones((), jnp.float32)]
  for _ in range(num_layers - 1):
    powers.append(powers[-1] * alpha)   # products, not pow: finite gradients at α′ = 0
  powers = jnp.stack(powers)
  restarts = attention.restart_flags(num_layers, reset_every=reset_every)
  starts = np.maximum.accumulate(np.where(restarts, np.arange(num_layers), 0))
  rows, cols = np.meshgrid(np.arange(num_layers), np.arange(num_layers), indexing="ij")
  live = (cols <= rows) & (cols >= starts[:, None])
  if window:
    live &= cols > rows - window
  first = 1.0 if h0 == "first_scores" else 1.0 - alpha
  lead = jnp.where(cols == starts[:, None], first, 1.0 - alpha)
  w = jnp.where(live, lead * powers[np.clip(rows - cols, 0, None)], 0.0)
  return w * jnp.asarray(scale, jnp.float32)


def _slots_constraint(x):
  return nn.with_logical_constraint(x, (None, "batch", "heads", None, None))


def initial_state(batch, length, num_heads, head_dim, num_layers, dtype, *, replay):
  """Zero buffers [L, B, N, T, D] (collect, with the row of weights the last
  layer used) or sinks (replay), and layer = 0."""
  zeros = _slots_constraint(jnp.zeros((num_layers, batch, num_heads, length, head_dim), dtype))
  if replay:
    return {"query_sink": zeros, "key_sink": zeros, "layer": jnp.zeros((), jnp.int32)}
  return {"query_layers": zeros, "key_layers": zeros, "layer": jnp.zeros((), jnp.int32),
          "hidden_weights": jnp.zeros((num_layers,), jnp.float32)}


def _heads_first(x_BxTxNxD):
  return jnp.swapaxes(x_BxTxNxD, 1, 2)


def _run(fn, args, mask_i8, opts_kw, num_slot_arrays):
  """fn(*args, mask, opts) per shard, interpret on CPU and Mosaic on TPU. args:
  (w, layer, `num_slot_arrays` arrays [L, B, N, T, D], then arrays [B, N, T, D])."""
  def specs(b, h):
    mask = P(b if mask_i8.shape[0] > 1 else None, h if mask_i8.shape[1] > 1 else None)
    num_head_arrays = len(args) - 2 - num_slot_arrays
    return (P(), P()) + (P(None, b, h),) * num_slot_arrays + (P(b, h),) * num_head_arrays + (
        mask,)

  def run(*operands):
    *operands, interpret, backend = operands
    opts = layerwise.Options(**opts_kw, interpret=interpret, backend=backend)
    return layerwise.per_shard(lambda *a: fn(*a, opts), operands, specs, lambda b, h: P(b, h))
  return layerwise.on_platform(run, *args, mask_i8)


def _collect_op(w, layer, query_layers, key_layers, v, mask, opts):
  del layer
  return layerwise._attend(w, query_layers, key_layers, v, mask, opts)



@functools.partial(jax.custom_vjp, nondiff_argnums=(10,))
def _replay_op(w, layer, query_final, key_final, query_sink, key_sink, q, k, v, mask, opts):
  del layer, query_sink, key_sink, q, k   # their values are in the final buffers
  return layerwise.forward(w, query_final, key_final, v, mask, opts)[0]


def _replay_fwd(w, layer, query_final, key_final, query_sink, key_sink, q, k, v, mask, opts):
  del query_sink, key_sink, q, k
  o, lse = layerwise.forward(w, query_final, key_final, v, mask, opts)
  return o, (w, layer, query_final, key_final, v, mask, o, lse)


def _replay_bwd(opts, residuals, do):
  w, layer, query_final, key_final, v, mask, o, lse = residuals
  gq, gk, dv, dw = layerwise.backward(w, query_final, key_final, v, mask, o, lse, do, opts)
  dq, dk = layerwise.weighted(w, gq), layerwise.weighted(w, gk)
  earlier = (jnp.arange(w.shape[0]) != layer)[:, None, None, None, None]
  return (dw, None, None, None, jnp.where(earlier, dq, 0).astype(dq.dtype),
          jnp.where(earlier, dk, 0).astype(dk.dtype), dq[layer], dk[layer], dv, None)


_replay_op.defvjp(_replay_fwd, _replay_bwd)


def _options(length, mask, block):
  return dict(block_q=layerwise.tile(length, block), block_k=layerwise.tile(length, block),
              causal=False, has_mask=mask is not None)


def collect_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, weights_L, *, mask=None,
                      block=128):
  """Pass 1: write this layer's q, k into the buffers, attend over them."""
  length, layer = q_BxTxNxD.shape[1], state["layer"]
  buffers = [_slots_constraint(jax.lax.dynamic_update_index_in_dim(
      state[key], _heads_first(x).astype(state[key].dtype), layer, 0))
      for key, x in (("query_layers", q_BxTxNxD), ("key_layers", k_BxTxNxD))]
  mask_i8 = layerwise.dense_mask(mask, length, length)
  out = _run(_collect_op, (weights_L[layer], layer, *buffers, _heads_first(v_BxTxNxD)),
             mask_i8, _options(length, mask, block), num_slot_arrays=2)
  return _heads_first(out), {"query_layers": buffers[0], "key_layers": buffers[1],
                             "layer": layer + 1, "hidden_weights": weights_L[layer]}


def replay_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, final_layers, weights_L, *,
                     mask=None, block=128):
  """Pass 2: attend over the final buffers (values of pass 1), gradients through
  the sinks (see the module docstring)."""
  length, layer = q_BxTxNxD.shape[1], state["layer"]
  q, k = _heads_first(q_BxTxNxD), _heads_first(k_BxTxNxD)
  mask_i8 = layerwise.dense_mask(mask, length, length)
  args = (weights_L[layer], layer, final_layers["query_layers"], final_layers["key_layers"],
          state["query_sink"], state["key_sink"], q.astype(state["query_sink"].dtype),
          k.astype(state["key_sink"].dtype), _heads_first(v_BxTxNxD))
  out = _run(_replay_op, args, mask_i8, _options(length, mask, block), num_slot_arrays=4)
  sinks = {}
  for key, x in (("query_sink", q), ("key_sink", k)):
    x = x.astype(state[key].dtype)
    sinks[key] = _slots_constraint(state[key].at[layer].add(x - jax.lax.stop_gradient(x)))
  return _heads_first(out), {**sinks, "layer": layer + 1}


def hidden_state(state):
  """H_n [B, N, T, S] float32 from a collect-pass state (analysis only)."""
  return jnp.einsum("l,lbntd,lbnsd->bnts", state["hidden_weights"],
                    state["query_layers"].astype(jnp.float32),
                    state["key_layers"].astype(jnp.float32))
