"""Exact MHA without H: a flash-attention kernel over every earlier layer's q and k.

Unrolling H_n = α′ H_{n−1} + (1−α′) s_n with s_l = q_l k_lᵀ gives

    H_n = Σ_l w_l · q_l k_lᵀ        (w_l = w_{n,l} · scale; 0 for layers not in H_n)

so layer n's attention softmax(mask(H_n)) V_n needs the queries and keys of the
layers before it, O(W·T·D), never H (T²). This kernel takes them as slots
q [W, B, N, T, D], k [W, B, N, S, D], the weights w [W] and V [B, N, S, D] (only
this layer's values: no padding to W·D) and computes, per (batch, head, query
tile), the logits tile Σ_l (w_l q_l) k_lᵀ key tile by key tile with the online
softmax of FlashAttention-2, storing only the output and the row log-sum-exp.

Backward (custom VJP) recomputes each logits tile from the slots:

    P = exp(mask(S) − lse),  dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))
    G_l = dS k_l,  Gᵏ_l = dSᵀ q_l,  dV = Pᵀ dO                 (two kernels)
    dq_l = w_l G_l,  dk_l = w_l Gᵏ_l,  dw_l = Σ q_l ⊙ G_l

so the residuals are the inputs, O and lse: O(W·T·D), nothing T×T. `causal`
builds the causal mask in the kernel and skips the key tiles above the diagonal
(their blocks are not even copied in); a dense `mask` may come on top.

Key tiles with no allowed pair (above the diagonal under `causal`, or a dense
mask block of zeros) are skipped, which halves the work of a causal mask. So a
row with no allowed key at all gets uniform weights over the keys of the tiles
its row block visits, or 0 when it visits none, where attention.masked_softmax
spreads it over every key: the two agree wherever a row allows some key.

Backends: Pallas interpret mode on CPU (tests), Mosaic on TPU (per shard inside
`jax.shard_map`, see `per_shard`). GPU: layerwise_triton.py.
"""

from __future__ import annotations

import functools
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MASKED = float(jnp.finfo(jnp.float32).min)   # as attention.masked_softmax


class Options(typing.NamedTuple):
  block_q: int
  block_k: int
  causal: bool
  has_mask: bool
  interpret: bool
  backend: str = "mosaic"   # or "triton" (layerwise_triton.py); both interpret on CPU


def tile(length, preferred):
  """The largest of (preferred, 512, 256, 128, …, 8) dividing `length`, else the length."""
  for size in (preferred, 512, 256, 128, 64, 32, 16, 8):
    if size <= length and length % size == 0:
      return size
  return length


def _dot(a, b, contract=((1,), (1,))):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _visible(q_tile, k_tile, opts):
  """Whether the (query tile, key tile) block has any key at or below the diagonal."""
  return k_tile * opts.block_k <= q_tile * opts.block_q + opts.block_q - 1


def _when_visible(q_tile, k_tile, mask_ref, opts):
  """Decorator: run the tile's body only where it can hold an allowed pair (below
  the diagonal under `causal`; a dense mask block with some nonzero entry)."""
  conditions = []
  if opts.causal:
    conditions.append(_visible(q_tile, k_tile, opts))
  if mask_ref is not None:
    conditions.append(jnp.max(mask_ref[0, 0].astype(jnp.float32)) > 0)
  if not conditions:
    return lambda body: body()
  return pl.when(functools.reduce(jnp.logical_and, conditions))


def _logits(w_ref, q_ref, k_ref):
  """Σ_l (w_l q_l) k_lᵀ for one tile, float32."""
  s = None
  for slot in range(q_ref.shape[0]):
    q = (q_ref[slot, 0, 0].astype(jnp.float32) * w_ref[slot]).astype(q_ref.dtype)
    term = _dot(q, k_ref[slot, 0, 0])
    s = term if s is None else s + term
  return s


def _allowed(mask_ref, q_tile, k_tile, opts):
  """Boolean [tq, tk] of allowed (query, key) pairs, or None when all are."""
  allowed = None
  if opts.causal:
    shape = (opts.block_q, opts.block_k)
    rows = q_tile * opts.block_q + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = k_tile * opts.block_k + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    allowed = rows >= cols
  if mask_ref is not None:
    dense = mask_ref[0, 0] != 0
    allowed = dense if allowed is None else allowed & dense
  return allowed


def _masked(s, allowed):
  return s if allowed is None else jnp.where(allowed, s, MASKED)


def _forward_kernel(w_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  o_ref, lse_ref, m_scr, l_scr, acc_scr = refs[opts.has_mask:]
  q_tile, k_tile = pl.program_id(2), pl.program_id(3)

  @pl.when(k_tile == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  @_when_visible(q_tile, k_tile, mask_ref, opts)
  def _accumulate():
    logits = _masked(_logits(w_ref, q_ref, k_ref), _allowed(mask_ref, q_tile, k_tile, opts))
    m_prev = m_scr[...]
    m_new = jnp.maximum(m_prev, logits.max(axis=-1, keepdims=True))
    p = jnp.exp(logits - m_new)
    correction = jnp.exp(m_prev - m_new)
    l_scr[...] = correction * l_scr[...] + p.sum(axis=-1, keepdims=True)
    acc_scr[...] = correction * acc_scr[...] + _dot(p.astype(v_ref.dtype), v_ref[0, 0],
                                                    ((1,), (0,)))
    m_scr[...] = m_new

  @pl.when(k_tile == pl.num_programs(3) - 1)
  def _finish():
    # l = 0: every tile of the row was skipped (no allowed key at all): output 0.
    total = jnp.where(l_scr[...] > 0, l_scr[...], 1.0)
    o_ref[0, 0] = (acc_scr[...] / total).astype(o_ref.dtype)
    lse_ref[0, 0] = jnp.where(l_scr[...] > 0, m_scr[...] + jnp.log(total), jnp.inf)


def _score_cotangent(w_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref, delta_ref,
                     q_tile, k_tile, opts):
  """(P, dS) of one tile: see the module docstring."""
  allowed = _allowed(mask_ref, q_tile, k_tile, opts)
  p = jnp.exp(_masked(_logits(w_ref, q_ref, k_ref), allowed) - lse_ref[0, 0])
  dp = _dot(do_ref[0, 0], v_ref[0, 0])
  ds = p * (dp - delta_ref[0, 0])
  return p, ds if allowed is None else jnp.where(allowed, ds, 0.0)


def _dq_kernel(w_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, gq_ref, gq_scr = refs[opts.has_mask:]
  q_tile, k_tile = pl.program_id(2), pl.program_id(3)

  @pl.when(k_tile == 0)
  def _init():
    gq_scr[...] = jnp.zeros(gq_scr.shape, jnp.float32)

  @_when_visible(q_tile, k_tile, mask_ref, opts)
  def _accumulate():
    _, ds = _score_cotangent(w_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref, delta_ref,
                             q_tile, k_tile, opts)
    for slot in range(k_ref.shape[0]):
      gq_scr[slot] += _dot(ds.astype(k_ref.dtype), k_ref[slot, 0, 0], ((1,), (0,)))

  @pl.when(k_tile == pl.num_programs(3) - 1)
  def _finish():
    for slot in range(gq_ref.shape[0]):
      gq_ref[slot, 0, 0] = gq_scr[slot].astype(gq_ref.dtype)


def _dkv_kernel(w_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, gk_ref, dv_ref, gk_scr, dv_scr = refs[opts.has_mask:]
  k_tile, q_tile = pl.program_id(2), pl.program_id(3)

  @pl.when(q_tile == 0)
  def _init():
    gk_scr[...] = jnp.zeros(gk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  @_when_visible(q_tile, k_tile, mask_ref, opts)
  def _accumulate():
    p, ds = _score_cotangent(w_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref, delta_ref,
                             q_tile, k_tile, opts)
    for slot in range(q_ref.shape[0]):
      gk_scr[slot] += _dot(ds.astype(q_ref.dtype), q_ref[slot, 0, 0], ((0,), (0,)))
    dv_scr[...] += _dot(p.astype(do_ref.dtype), do_ref[0, 0], ((0,), (0,)))

  @pl.when(q_tile == pl.num_programs(3) - 1)
  def _finish():
    for slot in range(gk_ref.shape[0]):
      gk_ref[slot, 0, 0] = gk_scr[slot].astype(gk_ref.dtype)
    dv_ref[0, 0] = dv_scr[...].astype(dv_ref.dtype)


class _Specs:
  """BlockSpecs for a grid (b, n, i, j): i walks query tiles and j key tiles when
  `rows_first`, else the reverse. Under `causal`, a block above the diagonal maps
  to the last visible one, so its copy is skipped (same block index as before)."""

  def __init__(self, slots, head_dim, mask_shape, opts, rows_first):
    self.slots, self.d, self.opts, self.rows_first = slots, head_dim, opts, rows_first
    self.mask_batch, self.mask_heads = mask_shape[0] > 1, mask_shape[1] > 1

  def _tiles(self, i, j):
    q_tile, k_tile = (i, j) if self.rows_first else (j, i)
    o = self.opts
    if o.causal and self.rows_first:
      k_tile = jnp.minimum(k_tile, (q_tile * o.block_q + o.block_q - 1) // o.block_k)
    elif o.causal:
      q_tile = jnp.maximum(q_tile, (k_tile * o.block_k) // o.block_q)
    return q_tile, k_tile

  def query_slots(self):
    return pl.BlockSpec((self.slots, 1, 1, self.opts.block_q, self.d),
                        lambda b, n, i, j: (0, b, n, self._tiles(i, j)[0], 0))

  def key_slots(self):
    return pl.BlockSpec((self.slots, 1, 1, self.opts.block_k, self.d),
                        lambda b, n, i, j: (0, b, n, self._tiles(i, j)[1], 0))

  def rows(self, width=None):     # per query row: o, dO, lse, δ
    return pl.BlockSpec((1, 1, self.opts.block_q, width or self.d),
                        lambda b, n, i, j: (b, n, self._tiles(i, j)[0], 0))

  def keys(self):                 # per key row: v, dV
    return pl.BlockSpec((1, 1, self.opts.block_k, self.d),
                        lambda b, n, i, j: (b, n, self._tiles(i, j)[1], 0))

  def mask(self):
    return pl.BlockSpec((1, 1, self.opts.block_q, self.opts.block_k),
                        lambda b, n, i, j: ((b if self.mask_batch else 0,
                                             n if self.mask_heads else 0) + self._tiles(i, j)))

  def inputs(self):
    specs = [pl.BlockSpec(memory_space=pltpu.SMEM), self.query_slots(), self.key_slots(),
             self.keys()]
    return specs + ([self.mask()] if self.opts.has_mask else [])


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, opts, cost):
  flops, transcendentals = cost
  return pl.pallas_call(
      functools.partial(kernel, opts=opts), grid=grid, in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=transcendentals,
                                    bytes_accessed=0),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=opts.interpret)


def _cost(q, k, matmuls_per_slot, extra_matmuls, opts):
  """FLOPs XLA cannot see inside the kernel (halved under causal skipping)."""
  slots, b, n, t, d = q.shape
  pairs = b * n * t * k.shape[3] * (0.5 if opts.causal else 1.0)
  return int(2 * pairs * d * (matmuls_per_slot * slots + extra_matmuls)), int(pairs)


def _operands(w, q, k, v, mask, opts):
  return (w, q, k, v) + ((mask,) if opts.has_mask else ())


def forward(w, q, k, v, mask, opts):
  """(O [B, N, T, D], lse float32 [B, N, T, 1] (Triton: [B, N, T])) from slots
  q [W, B, N, T, D] and k [W, B, N, S, D], weights w [W] float32, v [B, N, S, D]."""
  if opts.backend == "triton":
    from mha_jax.kernels import layerwise_triton
    return layerwise_triton.forward(w, q, k, v, mask, opts)
  slots, b, n, t, d = q.shape
  sp = _Specs(slots, d, mask.shape, opts, rows_first=True)
  return _call(
      _forward_kernel, (b, n, t // opts.block_q, k.shape[3] // opts.block_k), sp.inputs(),
      [sp.rows(), sp.rows(1)],
      [jax.ShapeDtypeStruct((b, n, t, d), v.dtype), jax.ShapeDtypeStruct((b, n, t, 1),
                                                                        jnp.float32)],
      [(opts.block_q, 1), (opts.block_q, 1), (opts.block_q, d)], opts,
      _cost(q, k, 1, 1, opts))(*_operands(w, q, k, v, mask, opts))


def backward(w, q, k, v, mask, o, lse, do, opts):
  """(G, Gᵏ, dV, dw) of `forward`'s O for the cotangent dO: G and Gᵏ are dq and dk
  before the weights (dq_l = w_l G_l), in the inputs' dtype, so a caller can fold
  the weighting into whatever consumes them."""
  if opts.backend == "triton":
    from mha_jax.kernels import layerwise_triton
    return layerwise_triton.backward(w, q, k, v, mask, o, lse, do, opts)
  slots, b, n, t, d = q.shape
  s_len = k.shape[3]
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  row_specs = _Specs(slots, d, mask.shape, opts, rows_first=True)
  gq = _call(
      _dq_kernel, (b, n, t // opts.block_q, s_len // opts.block_k),
      row_specs.inputs() + [row_specs.rows(), row_specs.rows(1), row_specs.rows(1)],
      row_specs.query_slots(), jax.ShapeDtypeStruct(q.shape, q.dtype),
      [(slots, opts.block_q, d)], opts,
      _cost(q, k, 2, 1, opts))(*_operands(w, q, k, v, mask, opts), do, lse, delta)
  col_specs = _Specs(slots, d, mask.shape, opts, rows_first=False)
  gk, dv = _call(
      _dkv_kernel, (b, n, s_len // opts.block_k, t // opts.block_q),
      col_specs.inputs() + [col_specs.rows(), col_specs.rows(1), col_specs.rows(1)],
      [col_specs.key_slots(), col_specs.keys()],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [(slots, opts.block_k, d), (opts.block_k, d)], opts,
      _cost(q, k, 2, 2, opts))(*_operands(w, q, k, v, mask, opts), do, lse, delta)
  dw = jnp.sum(q.astype(jnp.float32) * gq.astype(jnp.float32), axis=(1, 2, 3, 4))
  return gq, gk, dv, dw


def weighted(w, g):
  """w_l · g_l over the slot axis, in g's dtype."""
  return (w[:, None, None, None, None] * g.astype(jnp.float32)).astype(g.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(w, q, k, v, mask, opts):
  return forward(w, q, k, v, mask, opts)[0]


def _attend_fwd(w, q, k, v, mask, opts):
  o, lse = forward(w, q, k, v, mask, opts)
  return o, (w, q, k, v, mask, o, lse)


def _attend_bwd(opts, residuals, do):
  w, q, k, v, mask, o, lse = residuals
  gq, gk, dv, dw = backward(w, q, k, v, mask, o, lse, do, opts)
  return dw, weighted(w, gq), weighted(w, gk), dv, None


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


def options(length, s_len, *, has_mask, causal, block, interpret, backend="mosaic"):
  if causal and length != s_len:
    raise ValueError(f"causal=True needs as many queries as keys, got {length} and {s_len}")
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; allowed: {BACKENDS}")
  opts = Options(tile(length, block), tile(s_len, block), causal, has_mask, interpret, backend)
  if backend == "triton":
    from mha_jax.kernels import layerwise_triton
    layerwise_triton.check_options(opts)
  return opts


BACKENDS = ("mosaic", "triton")


def on_platform(fn, *args):
  """fn(*args, interpret, backend): Pallas interpret mode on CPU, Mosaic on TPU,
  Triton on CUDA GPUs, chosen when lowered (so an AOT TPU compile on a CPU host
  gets Mosaic)."""
  return jax.lax.platform_dependent(*args, cpu=lambda *a: fn(*a, True, "mosaic"),
                                    tpu=lambda *a: fn(*a, False, "mosaic"),
                                    cuda=lambda *a: fn(*a, False, "triton"))


def layerwise_attention(q_WxBxTxNxD, k_WxBxSxNxD, v_BxSxNxD, weights_W, *, mask=None,
                        causal=False, block=128, interpret=None, backend=None):
  """softmax(mask(Σ_l w_l q_l k_lᵀ)) V per head: out [B, T, N, D].

  q, k: the slots (e.g. every layer's queries and keys); weights [W] include the
  score scale. mask: True = may attend, broadcastable to [B, N, T, S]; `causal`
  adds the causal mask and skips the blocks above the diagonal. `block`:
  preferred tile edge. `interpret`/`backend` None: by platform (`on_platform`);
  interpret=True with backend "triton" runs the GPU kernels' logic on CPU.
  """
  length, s_len = q_WxBxTxNxD.shape[2], k_WxBxSxNxD.shape[2]
  weights_W = jnp.asarray(weights_W, jnp.float32)
  if weights_W.shape != (q_WxBxTxNxD.shape[0],):
    raise ValueError(f"weights shape {weights_W.shape} does not match "
                     f"{q_WxBxTxNxD.shape[0]} slots")
  mask_i8 = dense_mask(mask, length, s_len)

  def run(w, q, k, v, m, interpret, backend):
    opts = options(length, s_len, has_mask=mask is not None, causal=causal, block=block,
                   interpret=interpret, backend=backend)
    slot_spec = lambda b, h: jax.sharding.PartitionSpec(None, b, h, None, None)
    row_spec = lambda b, h: jax.sharding.PartitionSpec(b, h, None, None)

    def mask_spec(b, h):
      return jax.sharding.PartitionSpec(b if m.shape[0] > 1 else None,
                                        h if m.shape[1] > 1 else None, None, None)
    return per_shard(lambda *a: _attend(*a, opts), (w, q, k, v, m),
                     lambda b, h: (jax.sharding.PartitionSpec(), slot_spec(b, h),
                                   slot_spec(b, h), row_spec(b, h), mask_spec(b, h)),
                     row_spec)

  args = (weights_W, jnp.swapaxes(q_WxBxTxNxD, 2, 3), jnp.swapaxes(k_WxBxSxNxD, 2, 3),
          jnp.swapaxes(v_BxSxNxD, 1, 2), mask_i8)
  if interpret is None:
    out = on_platform(run, *args)
  else:
    out = run(*args, interpret, backend or "mosaic")
  return jnp.swapaxes(out, 1, 2)
