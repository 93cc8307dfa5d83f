"""Exact MHA without H: a flash-attention kernel over every earlier layer's q and k.

Unrolling H_n = α′ H_{n−1} + (1−α′) s_n with s_l = q_l k_lᵀ gives

    H_n = Σ_l w_l · q_l k_lᵀ        (w_l = w_{n,l} · scale; 0 for layers not in H_n)

so layer n's attention softmax(mask(H_n)) V_n needs the queries and keys of the
layers before it, O(W·T·D), never H (T²). The kernels take them as slots
q [W, B, N, T, D], k [W, B, N, S, D], the weights w [W], the live slot range
[first, end) (int32 [2]: slots outside it are never read, so layer n of a stack
does Σ_l over its n+1 layers, not W) and V [B, N, S, D] (only this layer's
values: no padding to W·D). Per (batch, head, query tile) they compute the
logits tile Σ_l (w_l q_l) k_lᵀ key tile by key tile with the online softmax of
FlashAttention-2, storing only the output and the row log-sum-exp.

Backward recomputes each logits tile from the slots:

    P = exp(mask(S) − lse),  dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))
    G_l = dS k_l,  Gᵏ_l = dSᵀ q_l,  dV = Pᵀ dO                 (two kernels)
    dq_l = w_l G_l,  dk_l = w_l Gᵏ_l,  dw_l = Σ q_l ⊙ G_l

and adds w_l G_l, w_l Gᵏ_l into gradient sinks [W, B, N, T, D] (`backward`), which
the TPU kernels update in place: a stack accumulates every layer's slot
gradients in one buffer, never a per-layer [W, …] array. The residuals are the
inputs, O and lse: O(W·T·D), nothing T×T. `causal` builds the causal mask in the
kernel and skips the key tiles above the diagonal (their blocks are not even
copied in); a dense `mask` may come on top.

Key tiles with no allowed pair (above the diagonal under `causal`, or a dense
mask block of zeros) are skipped, which halves the work of a causal mask. So a
row with no allowed key at all gets uniform weights over the keys of the tiles
its row block visits, or 0 when it visits none, where attention.masked_softmax
spreads it over every key: the two agree wherever a row allows some key.

Backends: Pallas interpret mode on CPU (tests), Mosaic on TPU
(layerwise_mosaic.py, per shard inside `jax.shard_map`, see `per_shard`),
Pallas-Triton on GPU (layerwise_triton.py).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mha_jax.kernels import layerwise_mosaic, layerwise_triton
from mha_jax.kernels.layerwise_mosaic import Options

BACKENDS = ("mosaic", "triton")


def _kernels(opts):
  return layerwise_triton if opts.backend == "triton" else layerwise_mosaic


def forward(w, slots, q, k, v, mask, opts):
  """(O [B, N, T, D], lse float32 [B, N, T, 1] (Triton: [B, N, T])) from slots
  q [W, B, N, T, D] and k [W, B, N, S, D], weights w [W] float32, the live slot
  range `slots` int32 [2] and v [B, N, S, D]."""
  return _kernels(opts).forward(w, slots, q, k, v, mask, opts)


def backward(w, slots, q, k, v, mask, o, lse, do, q_sink, k_sink, opts):
  """(q_sink + dq, k_sink + dk, dV, dw) of `forward`'s O for the cotangent dO, with
  dq_l = w_l G_l and dk_l = w_l Gᵏ_l on the live slots; the sinks' other slots
  come back unchanged."""
  return _kernels(opts).backward(w, slots, q, k, v, mask, o, lse, do, q_sink, k_sink, opts)


def tile(length, preferred):
  """The largest of (preferred, 512, 256, 128, …, 8) dividing `length`, else the length."""
  for size in (preferred, 512, 256, 128, 64, 32, 16, 8):
    if size <= length and length % size == 0:
      return size
  return length


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(w, slots, q, k, v, mask, opts):
  return forward(w, slots, q, k, v, mask, opts)[0]


def _attend_fwd(w, slots, q, k, v, mask, opts):
  o, lse = forward(w, slots, q, k, v, mask, opts)
  return o, (w, slots, q, k, v, mask, o, lse)


def _attend_bwd(opts, residuals, do):
  w, slots, q, k, v, mask, o, lse = residuals
  dq, dk, dv, dw = backward(w, slots, q, k, v, mask, o, lse, do, jnp.zeros_like(q),
                            jnp.zeros_like(k), opts)
  return dw, None, dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def per_shard(fn, args, specs_of_args, out_specs):
  """Runs `fn` (Mosaic kernels, which XLA cannot partition) on each shard of the
  current mesh, batch and heads split as the logical rules say; directly without
  a mesh. `specs_of_args(batch_axis, heads_axis)` gives the args' PartitionSpecs."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  batch_axis, heads_axis = nn.logical_to_mesh_axes(("batch", "heads"))
  in_specs, out_spec = specs_of_args(batch_axis, heads_axis), out_specs(batch_axis, heads_axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_spec,
                       check_vma=False)(*args)


def dense_mask(mask, length, s_len):
  """int8 [B|1, N|1, T, S] from a boolean mask broadcastable to [B, N, T, S], or a
  [1, 1, 1, 1] placeholder for None."""
  if mask is None:
    return jnp.zeros((1, 1, 1, 1), jnp.int8)
  mask = jnp.asarray(mask)
  mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  return jnp.broadcast_to(mask, mask.shape[:2] + (length, s_len)).astype(jnp.int8)


def options(length, s_len, *, has_mask, causal, block, interpret, backend="mosaic",
            mean_slots=0.0):
  if causal and length != s_len:
    raise ValueError(f"causal=True needs as many queries as keys, got {length} and {s_len}")
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; allowed: {BACKENDS}")
  opts = Options(tile(length, block), tile(s_len, block), causal, has_mask, interpret, backend,
                 mean_slots)
  if backend == "triton":
    layerwise_triton.check_options(opts)
  return opts


def on_platform(fn, *args):
  """fn(*args, interpret, backend): Pallas interpret mode on CPU, Mosaic on TPU,
  Triton on CUDA GPUs, chosen when lowered (so an AOT TPU compile on a CPU host
  gets Mosaic)."""
  return jax.lax.platform_dependent(*args, cpu=lambda *a: fn(*a, True, "mosaic"),
                                    tpu=lambda *a: fn(*a, False, "mosaic"),
                                    cuda=lambda *a: fn(*a, False, "triton"))


def layerwise_attention(q_WxBxTxNxD, k_WxBxSxNxD, v_BxSxNxD, weights_W, *, mask=None,
                        causal=False, block=128, interpret=None, backend=None, live=None):
  """softmax(mask(Σ_l w_l q_l k_lᵀ)) V per head: out [B, T, N, D].

  q, k: the slots (e.g. every layer's queries and keys); weights [W] include the
  score scale; `live` (first, end): the only slots read (default all; the others
  get zero gradients). mask: True = may attend, broadcastable to [B, N, T, S];
  `causal` adds the causal mask and skips the blocks above the diagonal.
  `block`: preferred tile edge. `interpret`/`backend` None: by platform
  (`on_platform`); interpret=True with backend "triton" runs the GPU kernels'
  logic on CPU.
  """
  num_slots, length, s_len = q_WxBxTxNxD.shape[0], q_WxBxTxNxD.shape[2], k_WxBxSxNxD.shape[2]
  weights_W = jnp.asarray(weights_W, jnp.float32)
  if weights_W.shape != (num_slots,):
    raise ValueError(f"weights shape {weights_W.shape} does not match {num_slots} slots")
  live = (0, num_slots) if live is None else tuple(live)
  if not 0 <= live[0] < live[1] <= num_slots:
    raise ValueError(f"live={live}; allowed: 0 <= first < end <= {num_slots}")
  padded = padded_length(length, block), padded_length(s_len, block)
  mask_i8, has_mask = padded_mask(mask, length, s_len, padded, causal)
  q_WxBxTxNxD, k_WxBxSxNxD, v_BxSxNxD = (
      pad_axis(x, axis, size) for x, axis, size in
      ((q_WxBxTxNxD, 2, padded[0]), (k_WxBxSxNxD, 2, padded[1]), (v_BxSxNxD, 1, padded[1])))
  return jnp.swapaxes(_layerwise_padded(
      q_WxBxTxNxD, k_WxBxSxNxD, v_BxSxNxD, weights_W, live, mask_i8, has_mask, causal,
      block, interpret, backend), 1, 2)[:, :length]


def padded_length(length, block):
  """`length`, or where no tile of `tile` divides it, rounded up to a power of two
  (below `block`) or to a multiple of `block`: Triton tiles must be powers of two."""
  if tile(length, block) != length or length & (length - 1) == 0:
    return length
  size = min(block, 1 << (length - 1).bit_length())
  return -(-length // size) * size


def pad_axis(x, axis, size):
  """x with zeros appended along `axis` up to `size` (x itself if it has that size)."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def padded_mask(mask, length, s_len, padded, causal):
  """(int8 mask [B|1, N|1, T′, S′] or its placeholder, has_mask) for queries and keys
  padded to `padded` = (T′, S′), e.g. ViT's 197 tokens: the appended keys are masked
  out, unless `causal` already hides them from the real queries."""
  mask_i8, has_mask = dense_mask(mask, length, s_len), mask is not None
  if padded != (length, s_len):
    if not has_mask and not causal:
      mask_i8, has_mask = jnp.ones((1, 1, length, s_len), jnp.int8), True
    if has_mask:
      mask_i8 = pad_axis(pad_axis(mask_i8, 2, padded[0]), 3, padded[1])
  return mask_i8, has_mask


def _layerwise_padded(q_WxBxTxNxD, k_WxBxSxNxD, v_BxSxNxD, weights_W, live, mask_i8,
                      has_mask, causal, block, interpret, backend):
  """layerwise_attention on tile-aligned lengths: out [B, N, T, D]."""
  length, s_len = q_WxBxTxNxD.shape[2], k_WxBxSxNxD.shape[2]

  def run(w, slots, q, k, v, m, interpret, backend):
    opts = options(length, s_len, has_mask=has_mask, causal=causal, block=block,
                   interpret=interpret, backend=backend, mean_slots=float(live[1] - live[0]))
    slot_spec = lambda b, h: jax.sharding.PartitionSpec(None, b, h, None, None)
    row_spec = lambda b, h: jax.sharding.PartitionSpec(b, h, None, None)
    mask_spec = lambda b, h: jax.sharding.PartitionSpec(b if m.shape[0] > 1 else None,
                                                       h if m.shape[1] > 1 else None)
    return per_shard(lambda *a: _attend(*a, opts), (w, slots, q, k, v, m),
                     lambda b, h: (jax.sharding.PartitionSpec(),) * 2 + (
                         slot_spec(b, h), slot_spec(b, h), row_spec(b, h), mask_spec(b, h)),
                     row_spec)

  args = (weights_W, jnp.asarray(live, jnp.int32), jnp.swapaxes(q_WxBxTxNxD, 2, 3),
          jnp.swapaxes(k_WxBxSxNxD, 2, 3), jnp.swapaxes(v_BxSxNxD, 1, 2), mask_i8)
  if interpret is None:
    return on_platform(run, *args)
  return run(*args, interpret, backend or "mosaic")
