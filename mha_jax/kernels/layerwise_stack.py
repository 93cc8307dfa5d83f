"""Exact MHA through a layer stack in O(L·T·D) memory: each layer's q_l, k_l stored
once, H never formed (implementation "layerwise").

Layer n attends with softmax(mask(Σ_{l≤n} w_{n,l} q_l k_lᵀ)) V_n (layerwise.py), so
it needs the queries and keys of the layers before it. Carrying them in an
[L, …] buffer through `nn.scan` is exact but costs L²·T·D under autodiff: the
scan saves its carry (or the kernel's inputs) at every layer. Instead the stack
runs twice:

  1. "collect": forward only; the carry's buffers [L, B, N, T, D] receive slot n
     at layer n. Their final values Q_f, K_f (stop_gradient) hold every layer's
     q and k, and slot l of the buffer at layer n equals Q_f[l] for l ≤ n. With
     `keep_outputs` it also keeps every layer's attention output O_f and row
     log-sum-exp (lse, [L, B, N, T]).
  2. "replay": the differentiated pass. The final buffers enter every layer as the
     same loop-invariant inputs (saved once, not per layer). Layer n's forward
     value is O_f[n] when kept, else its forward kernel runs again (and once more
     under remat); its backward kernels read only the live slots [first_n, n]
     (`live_slots`), the layers in H_n. The gradient each layer sends to earlier layers' q_l, k_l travels back in
     "sink" carries [L, B, N, T, D] whose value is zero: the layer's custom VJP
     passes the sinks through unchanged in the forward pass and, in the backward
     pass, receives their cotangent (slot l holds Σ_{m>n} ∂L/∂q_l from the later
     layers), adds w_{n,l}·∂ into it in place inside the kernels and hands it to
     layer n−1; slot n is then the whole ∂L/∂q_n, this layer's q gradient.

Memory: Q_f, K_f (O_f) and the two sink cotangents, all O(L·T·D), with no
per-layer [L, …] gradient array; compute: one extra forward pass of the stack,
and layer n's kernels do n+1 slot matmuls per tile (Σ_n (n+1), not L²). Keeping
the outputs trades one more [L, B, N, T, D] buffer for the replay's forward
kernels: with full remat, two of the five kernel passes per layer.

Lengths no power-of-two tile divides (ViT's 197 tokens) are padded in the
buffers to `padded_length` with the appended keys masked out: Triton's tiles must
be powers of two; the Mosaic kernels would otherwise take the whole length as one tile.

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
BLOCK = 256   # the kernels' preferred tile edge


def _chain_starts(num_layers, reset_every):
  restarts = attention.restart_flags(num_layers, reset_every=reset_every)
  return np.maximum.accumulate(np.where(restarts, np.arange(num_layers), 0))


def live_slots(num_layers, *, reset_every=0, window=0):
  """int32 [L, 2]: layer n's live slots [first, end) — the layers H_n holds, from
  its chain start (or the window's first layer) to n; the others have w = 0."""
  first = _chain_starts(num_layers, reset_every)
  if window:
    first = np.maximum(first, np.arange(num_layers) - window + 1)
  return np.stack([first, np.arange(1, num_layers + 1)], axis=1).astype(np.int32)


def weight_matrix(alpha_hidden, num_layers, *, h0="zeros", reset_every=0, window=0,
                  scale=1.0):
  """w [L, L] float32 (× scale): H_n = Σ_l w[n, l] s_l. α′ may be traced."""
  alpha = jnp.asarray(alpha_hidden, jnp.float32)
  powers = [jnp.ones((), jnp.float32)]
  for _ in range(num_layers - 1):
    powers.append(powers[-1] * alpha)   # products, not pow: finite gradients at α′ = 0
  powers = jnp.stack(powers)
  starts = _chain_starts(num_layers, reset_every)
  ranges = live_slots(num_layers, reset_every=reset_every, window=window)
  rows, cols = np.meshgrid(np.arange(num_layers), np.arange(num_layers), indexing="ij")
  live = (cols >= ranges[:, :1]) & (cols < ranges[:, 1:])
  first = 1.0 if h0 == "first_scores" else 1.0 - alpha
  lead = jnp.where(cols == starts[:, None], first, 1.0 - alpha)
  w = jnp.where(live, lead * powers[np.clip(rows - cols, 0, None)], 0.0)
  return w * jnp.asarray(scale, jnp.float32)


def _slots_constraint(x):
  return nn.with_logical_constraint(x, (None, "batch", "heads", None, None))


KEPT_OUTPUTS = ("output_layers", "lse_layers")
FINAL_BUFFERS = ("query_layers", "key_layers") + KEPT_OUTPUTS   # those a collect state has


def initial_state(batch, length, num_heads, head_dim, num_layers, dtype, *, replay,
                  keep_outputs=False):
  """Zero buffers (collect: q, k and with `keep_outputs` o, lse; and the row of
  weights the last layer used) or sinks [L, B, N, T′, D] (replay), and layer = 0;
  T′ = `padded_length(T)`."""
  length = padded_length(length)
  zeros = _slots_constraint(jnp.zeros((num_layers, batch, num_heads, length, head_dim), dtype))
  if replay:
    return {"query_sink": zeros, "key_sink": zeros, "layer": jnp.zeros((), jnp.int32)}
  state = {"query_layers": zeros, "key_layers": zeros, "layer": jnp.zeros((), jnp.int32),
           "hidden_weights": jnp.zeros((num_layers,), jnp.float32)}
  if keep_outputs:
    outputs = jnp.zeros((num_layers, batch, num_heads) + _lane_dense(length, head_dim), dtype)
    lse = jnp.zeros((num_layers, batch, num_heads, length), jnp.float32)
    state.update(output_layers=_slots_constraint(outputs), lse_layers=nn.with_logical_constraint(
        lse, (None, "batch", "heads", None)))
  return state


def _lane_dense(length, head_dim, lanes=128):
  """The kept outputs' last two axes: [T·D/128, 128] where D < 128 divides into
  whole lanes, else [T, D]. TPU layouts pad a minor axis to 128 lanes: a [T, 64]
  buffer would take twice its size (the lse, [L, B, N, T], has no unit axis for
  the same reason)."""
  if head_dim < lanes and (length * head_dim) % lanes == 0:
    return length * head_dim // lanes, lanes
  return length, head_dim


def _heads_first(x_BxTxNxD):
  return jnp.swapaxes(x_BxTxNxD, 1, 2)


def padded_length(length):
  """The buffers' length: T, or T rounded up where no power-of-two tile divides it
  (Triton's tiles must be powers of two: ViT's 197 tokens → 256)."""
  return layerwise.padded_length(length, BLOCK)


def _kernel_inputs(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask, causal):
  """(q, k, v heads first [B, N, T′, D], int8 mask, has_mask), padded to T′ with
  the appended keys masked out (a causal mask already hides them from real queries)."""
  length = q_BxTxNxD.shape[1]
  padded = padded_length(length)
  q, k, v = (layerwise.pad_axis(_heads_first(x), 2, padded)
             for x in (q_BxTxNxD, k_BxTxNxD, v_BxTxNxD))
  return (q, k, v) + layerwise.padded_mask(mask, length, length, (padded, padded), causal)


def _run(fn, args, mask_i8, opts_kw, num_slot_arrays, out_specs):
  """fn(*args, mask, opts) per shard, interpret on CPU and Mosaic on TPU. args:
  (w, live slots, layer, `num_slot_arrays` arrays [L, B, N, T, …], then arrays
  [B, N, T, …]); out_specs(batch_axis, heads_axis) as `layerwise.per_shard`."""
  def specs(b, h):
    mask = P(b if mask_i8.shape[0] > 1 else None, h if mask_i8.shape[1] > 1 else None)
    num_head_arrays = len(args) - 3 - num_slot_arrays
    return (P(),) * 3 + (P(None, b, h),) * num_slot_arrays + (P(b, h),) * num_head_arrays + (
        mask,)

  def run(*operands):
    *operands, interpret, backend = operands
    opts = layerwise.Options(**opts_kw, interpret=interpret, backend=backend)
    return layerwise.per_shard(lambda *a: fn(*a, opts), operands, specs, out_specs)
  return layerwise.on_platform(run, *args, mask_i8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _collect_op(w, slots, layer, query_layers, key_layers, v, mask, opts):
  """(O, lse [B, N, T]) of the collect pass; lse is read only through stop_gradient."""
  return _collect_fwd(w, slots, layer, query_layers, key_layers, v, mask, opts)[0]


def _collect_fwd(w, slots, layer, query_layers, key_layers, v, mask, opts):
  del layer
  o, lse = layerwise.forward(w, slots, query_layers, key_layers, v, mask, opts)
  return (o, lse.reshape(o.shape[:3])), (w, slots, query_layers, key_layers, v, mask, o, lse)


def _collect_bwd(opts, residuals, cotangents):
  dw, _, dq, dk, dv, _ = layerwise._attend_bwd(opts, residuals, cotangents[0])
  return dw, None, None, dq, dk, dv, None


_collect_op.defvjp(_collect_fwd, _collect_bwd)


def _lse_for_kernels(lse_BxNxT, opts):
  return lse_BxNxT if opts.backend == "triton" else lse_BxNxT[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(13,))
def _replay_op(w, slots, layer, query_final, key_final, query_sink, key_sink, q, k, v,
               o_BxNxTxD, lse_BxNxT, mask, opts):
  """(O, sinks): the forward value is the given O (the collect pass's, or its
  kernel's rerun); the gradients come from the kernels' backward."""
  del w, slots, layer, query_final, key_final, q, k, v, lse_BxNxT, mask, opts
  return o_BxNxTxD, query_sink, key_sink


def _replay_fwd(w, slots, layer, query_final, key_final, query_sink, key_sink, q, k, v,
                o_BxNxTxD, lse_BxNxT, mask, opts):
  del q, k   # their values are in the final buffers
  return (o_BxNxTxD, query_sink, key_sink), (w, slots, layer, query_final, key_final, v, mask,
                                             o_BxNxTxD, _lse_for_kernels(lse_BxNxT, opts))


def _replay_bwd(opts, residuals, cotangents):
  """The sinks' cotangents in, plus this layer's slot gradients (in place on TPU);
  slot `layer` of the result is this layer's own q, k gradient."""
  w, slots, layer, query_final, key_final, v, mask, o, lse = residuals
  do, query_sink, key_sink = cotangents
  query_sink, key_sink, dv, dw = layerwise.backward(w, slots, query_final, key_final, v, mask, o,
                                                    lse, do, query_sink, key_sink, opts)
  return (dw, None, None, None, None, query_sink, key_sink, query_sink[layer], key_sink[layer],
          dv, None, None, None)


_replay_op.defvjp(_replay_fwd, _replay_bwd)


def _options(padded, has_mask, slot_ranges, causal):
  return dict(block_q=layerwise.tile(padded, BLOCK), block_k=layerwise.tile(padded, BLOCK),
              causal=causal, has_mask=has_mask,
              mean_slots=float(np.mean(slot_ranges[:, 1] - slot_ranges[:, 0])))


def collect_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, weights_L, slot_ranges, *,
                      mask=None, causal=False):
  """Pass 1: write this layer's q, k into the buffers (and its output and lse
  where the state keeps them), attend over them. slot_ranges: `live_slots`
  (NumPy); `causal` adds the causal mask and skips the tiles above the diagonal."""
  length, layer = q_BxTxNxD.shape[1], state["layer"]
  q, k, v, mask_i8, has_mask = _kernel_inputs(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask, causal)
  q, k = (_slots_constraint(jax.lax.dynamic_update_index_in_dim(
      state[key], x.astype(state[key].dtype), layer, 0))
      for key, x in (("query_layers", q), ("key_layers", k)))
  args = (weights_L[layer], jnp.asarray(slot_ranges)[layer], layer, q, k, v)
  out, lse = _run(_collect_op, args, mask_i8,
                  _options(v.shape[2], has_mask, slot_ranges, causal), 2,
                  lambda b, h: (P(b, h), P(b, h)))
  kept = {key: jax.lax.dynamic_update_index_in_dim(
      state[key], jax.lax.stop_gradient(x).reshape(state[key].shape[1:]).astype(
          state[key].dtype), layer, 0)
      for key, x in zip(KEPT_OUTPUTS, (out, lse)) if key in state}
  return _heads_first(out[:, :, :length]), {
      **state, **kept, "query_layers": q, "key_layers": k, "layer": layer + 1,
      "hidden_weights": weights_L[layer]}


def replay_attention(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, state, final_layers, weights_L,
                     slot_ranges, *, mask=None, causal=False):
  """Pass 2: this layer's output from the final buffers (values of pass 1: the
  kept output, or its forward kernel rerun), gradients through the backward
  kernels and the sinks (see the module docstring)."""
  length, layer = q_BxTxNxD.shape[1], state["layer"]
  sinks = state["query_sink"], state["key_sink"]
  q, k, v, mask_i8, has_mask = _kernel_inputs(q_BxTxNxD, k_BxTxNxD, v_BxTxNxD, mask, causal)
  q, k = (x.astype(sink.dtype) for x, sink in zip((q, k), sinks))
  final = final_layers["query_layers"], final_layers["key_layers"]
  opts_kw = _options(v.shape[2], has_mask, slot_ranges, causal)
  weights, slots = weights_L[layer], jnp.asarray(slot_ranges)[layer]
  if "output_layers" in final_layers:
    o = final_layers["output_layers"][layer].reshape(v.shape)
    lse = final_layers["lse_layers"][layer]
  else:   # inputs without gradient: this forward is a value, the op below differentiates
    o, lse = _run(_collect_op, jax.lax.stop_gradient((weights, slots, layer, *final, v)),
                  mask_i8, opts_kw, 2, lambda b, h: (P(b, h), P(b, h)))
  out, query_sink, key_sink = _run(
      _replay_op, (weights, slots, layer, *final, *sinks, q, k, v, o, lse), mask_i8, opts_kw, 4,
      lambda b, h: (P(b, h), P(None, b, h), P(None, b, h)))
  return _heads_first(out[:, :, :length]), {"query_sink": _slots_constraint(query_sink),
                                            "key_sink": _slots_constraint(key_sink),
                                            "layer": layer + 1}


def hidden_state(state, length):
  """H_n [B, N, T, T] float32 from a collect-pass state (analysis only)."""
  q, k = (state[key][:, :, :, :length].astype(jnp.float32)
          for key in ("query_layers", "key_layers"))
  return jnp.einsum("l,lbntd,lbnsd->bnts", state["hidden_weights"], q, k)
