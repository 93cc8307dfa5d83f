"""The TPU (Mosaic) kernels of the layer-wise attention (layerwise.py has the
mathematics, the custom VJP and the platform dispatch), and what they share with
layerwise_triton.py.

Grid (batch, head, query tile, key tile); the key (or, for dK/dV, query) tile
axis is the sequential one carrying the online-softmax state or the gradient
accumulators in VMEM. The weights and the live slot range sit in SMEM; each
tile's logits are a `fori_loop` over the live slots only, so layer n of a stack
does n+1 slot matmuls, not W (the BlockSpecs still copy all W slots' blocks in:
the cost estimate counts those bytes). Under `causal` the index maps send the
blocks above the diagonal to the last visible one, so they are not copied.

The backward kernels take the gradient sinks as aliased inputs: the dq kernel
writes sink + w_l G_l for the live slots of its query tile (the other slots
pass through unchanged) and dw_l's partial sums, one lane per slot; the dk/dv
kernel does the same for the key sink and writes dV.
"""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MASKED = float(jnp.finfo(jnp.float32).min)   # as attention.masked_softmax
LANES = 128   # dw: one lane per slot in the dq kernel's partial-sum blocks


class Options(typing.NamedTuple):
  block_q: int
  block_k: int
  causal: bool
  has_mask: bool
  interpret: bool
  backend: str = "mosaic"   # or "triton" (layerwise_triton.py); both interpret on CPU
  mean_slots: float = 0.0   # live slots per call, for the cost estimate; 0: all W


def dot(a, b, contract=((1,), (1,))):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def masked(s, allowed):
  return s if allowed is None else jnp.where(allowed, s, MASKED)


def over_live_slots(slots_ref, body, init):
  """fori_loop(first, end, body, init) over the live slot range."""
  return jax.lax.fori_loop(slots_ref[0], slots_ref[1], body, init)


def _when_visible(q_tile, k_tile, mask_ref, opts):
  """Decorator: run the tile's body only where it can hold an allowed pair (below
  the diagonal under `causal`; a dense mask block with some nonzero entry)."""
  conditions = []
  if opts.causal:
    conditions.append(k_tile * opts.block_k <= q_tile * opts.block_q + opts.block_q - 1)
  if mask_ref is not None:
    conditions.append(jnp.max(mask_ref[0, 0].astype(jnp.float32)) > 0)
  if not conditions:
    return lambda body: body()
  return pl.when(functools.reduce(jnp.logical_and, conditions))


def _logits(w_ref, slots_ref, q_ref, k_ref, opts):
  """Σ_l (w_l q_l) k_lᵀ over the live slots for one tile, float32."""
  def add(slot, s):
    q = (q_ref[slot, 0, 0].astype(jnp.float32) * w_ref[slot]).astype(q_ref.dtype)
    return s + dot(q, k_ref[slot, 0, 0])
  return over_live_slots(slots_ref, add, jnp.zeros((opts.block_q, opts.block_k), jnp.float32))


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


def _forward_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
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
    logits = masked(_logits(w_ref, slots_ref, q_ref, k_ref, opts),
                    _allowed(mask_ref, q_tile, k_tile, opts))
    m_prev = m_scr[...]
    m_new = jnp.maximum(m_prev, logits.max(axis=-1, keepdims=True))
    p = jnp.exp(logits - m_new)
    correction = jnp.exp(m_prev - m_new)
    l_scr[...] = correction * l_scr[...] + p.sum(axis=-1, keepdims=True)
    acc_scr[...] = correction * acc_scr[...] + dot(p.astype(v_ref.dtype), v_ref[0, 0],
                                                   ((1,), (0,)))
    m_scr[...] = m_new

  @pl.when(k_tile == pl.num_programs(3) - 1)
  def _finish():
    # l = 0: every tile of the row was skipped (no allowed key at all): output 0.
    total = jnp.where(l_scr[...] > 0, l_scr[...], 1.0)
    o_ref[0, 0] = (acc_scr[...] / total).astype(o_ref.dtype)
    lse_ref[0, 0] = jnp.where(l_scr[...] > 0, m_scr[...] + jnp.log(total), jnp.inf)


def _score_cotangent(w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref,
                     delta_ref, q_tile, k_tile, opts):
  """(P, dS) of one tile: see the module docstring."""
  allowed = _allowed(mask_ref, q_tile, k_tile, opts)
  p = jnp.exp(masked(_logits(w_ref, slots_ref, q_ref, k_ref, opts), allowed) - lse_ref[0, 0])
  ds = p * (dot(do_ref[0, 0], v_ref[0, 0]) - delta_ref[0, 0])
  return p, ds if allowed is None else jnp.where(allowed, ds, 0.0)


def _into_sink(w_ref, slots_ref, g_scr, sink_ref, new_sink_ref, contribution=None):
  """new sink = sink, plus w_l · g_l on the live slots (float32 sum, one rounding);
  `contribution(slot, g_l, lanes)` fills one lane per live slot of an [8, LANES]
  vector, which is returned."""
  new_sink_ref[...] = sink_ref[...]

  def add(slot, lanes):
    g = g_scr[slot]
    new_sink_ref[slot, 0, 0] = (sink_ref[slot, 0, 0].astype(jnp.float32)
                                + w_ref[slot] * g).astype(new_sink_ref.dtype)
    return lanes if contribution is None else contribution(slot, g, lanes)
  return over_live_slots(slots_ref, add, jnp.zeros((8, LANES), jnp.float32))


def _dq_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, sink_ref, new_sink_ref, dw_ref, gq_scr = refs[opts.has_mask:]
  q_tile, k_tile = pl.program_id(2), pl.program_id(3)

  @pl.when(k_tile == 0)
  def _init():
    gq_scr[...] = jnp.zeros(gq_scr.shape, jnp.float32)

  @_when_visible(q_tile, k_tile, mask_ref, opts)
  def _accumulate():
    _, ds = _score_cotangent(w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref,
                             delta_ref, q_tile, k_tile, opts)
    ds = ds.astype(k_ref.dtype)

    def add(slot, _):
      gq_scr[slot] += dot(ds, k_ref[slot, 0, 0], ((1,), (0,)))
    over_live_slots(slots_ref, add, None)

  def dw_lane(slot, g, lanes):   # dw_l's partial sum Σ q_l ⊙ G_l over this query tile
    total = jnp.sum(jnp.sum(q_ref[slot, 0, 0].astype(jnp.float32) * g, axis=1, keepdims=True),
                    axis=0, keepdims=True)
    lane = jax.lax.broadcasted_iota(jnp.int32, lanes.shape, 1)
    return jnp.where(lane == slot, total, lanes)

  @pl.when(k_tile == pl.num_programs(3) - 1)
  def _finish():
    dw_ref[0, 0, 0] = _into_sink(w_ref, slots_ref, gq_scr, sink_ref, new_sink_ref, dw_lane)


def _dkv_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, sink_ref, new_sink_ref, dv_ref, gk_scr, dv_scr = (
      refs[opts.has_mask:])
  k_tile, q_tile = pl.program_id(2), pl.program_id(3)

  @pl.when(q_tile == 0)
  def _init():
    gk_scr[...] = jnp.zeros(gk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  @_when_visible(q_tile, k_tile, mask_ref, opts)
  def _accumulate():
    p, ds = _score_cotangent(w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref, do_ref, lse_ref,
                             delta_ref, q_tile, k_tile, opts)
    ds = ds.astype(q_ref.dtype)

    def add(slot, _):
      gk_scr[slot] += dot(ds, q_ref[slot, 0, 0], ((0,), (0,)))
    over_live_slots(slots_ref, add, None)
    dv_scr[...] += dot(p.astype(do_ref.dtype), do_ref[0, 0], ((0,), (0,)))

  @pl.when(q_tile == pl.num_programs(3) - 1)
  def _finish():
    _into_sink(w_ref, slots_ref, gk_scr, sink_ref, new_sink_ref)
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

  def dw_lanes(self):             # the dq kernel's [8, LANES] partial sums per query tile
    return pl.BlockSpec((1, 1, 1, 8, LANES), lambda b, n, i, j: (b, n, i, 0, 0))

  def mask(self):
    return pl.BlockSpec((1, 1, self.opts.block_q, self.opts.block_k),
                        lambda b, n, i, j: ((b if self.mask_batch else 0,
                                             n if self.mask_heads else 0) + self._tiles(i, j)))

  def inputs(self):
    smem = pl.BlockSpec(memory_space=pltpu.SMEM)
    specs = [smem, smem, self.query_slots(), self.key_slots(), self.keys()]
    return specs + ([self.mask()] if self.opts.has_mask else [])


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, opts, cost, aliases=None):
  flops, transcendentals, bytes_accessed = cost
  return pl.pallas_call(
      functools.partial(kernel, opts=opts), grid=grid, in_specs=in_specs,
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
      input_output_aliases=aliases or {}, name=f"layerwise{kernel.__name__}",
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=transcendentals,
                                    bytes_accessed=bytes_accessed),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=opts.interpret)


def _cost(q, k, opts, slot_matmuls, extra_matmuls, rows_first, own_slot_copies):
  """(FLOPs, exps, bytes) the kernel does: the tiles it visits (all of them for a
  dense mask, whose all-masked blocks are only known at run time), the live
  slots (`opts.mean_slots`, the stack's mean), and the blocks it copies: every
  slot's (the BlockSpecs bring all W) per visited tile, and per tile of its own
  axis `own_slot_copies` slot blocks (inputs, sink in and out) and two rows."""
  slots, b, n, t, d = q.shape
  s_len, isz = k.shape[3], q.dtype.itemsize
  nq, nk = t // opts.block_q, s_len // opts.block_k
  visible = nq * nk
  if opts.causal:
    visible = sum(min(nk, ((i + 1) * opts.block_q - 1) // opts.block_k + 1) for i in range(nq))
  pairs = b * n * visible * opts.block_q * opts.block_k
  flops = 2 * pairs * d * (slot_matmuls * (opts.mean_slots or slots) + extra_matmuls)
  own, other, own_tiles = ((opts.block_q, opts.block_k, nq) if rows_first
                           else (opts.block_k, opts.block_q, nk))
  per_step = (slots + 1) * other * d * isz + 8 * other + opts.has_mask * own * other
  per_own_tile = (own_slot_copies * slots + 2) * own * d * isz + 8 * own
  return int(flops), int(pairs), int(b * n * (visible * per_step + own_tiles * per_own_tile))


def _operands(w, slots, q, k, v, mask, opts):
  return (w, slots, q, k, v) + ((mask,) if opts.has_mask else ())


def forward(w, slots, q, k, v, mask, opts):
  """(O [B, N, T, D], lse float32 [B, N, T, 1] (Triton: [B, N, T])) from slots
  q [W, B, N, T, D] and k [W, B, N, S, D], weights w [W] float32, the live slot
  range `slots` int32 [2] and v [B, N, S, D]."""
  num_slots, b, n, t, d = q.shape
  sp = _Specs(num_slots, d, mask.shape, opts, rows_first=True)
  return _call(
      _forward_kernel, (b, n, t // opts.block_q, k.shape[3] // opts.block_k), sp.inputs(),
      [sp.rows(), sp.rows(1)],
      [jax.ShapeDtypeStruct((b, n, t, d), v.dtype),
       jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32)],
      [(opts.block_q, 1), (opts.block_q, 1), (opts.block_q, d)], opts,
      _cost(q, k, opts, 1, 1, True, 1))(*_operands(w, slots, q, k, v, mask, opts))


def backward(w, slots, q, k, v, mask, o, lse, do, q_sink, k_sink, opts):
  """(q_sink + dq, k_sink + dk, dV, dw) of `forward`'s O for the cotangent dO, with
  dq_l = w_l G_l and dk_l = w_l Gᵏ_l on the live slots; the sinks' other slots
  come back unchanged. The sinks are updated in place where XLA can donate them."""
  num_slots, b, n, t, d = q.shape
  s_len, nq = k.shape[3], t // opts.block_q
  if num_slots > LANES:
    raise ValueError(f"{num_slots} slots; the kernel takes at most {LANES}")
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  operands = _operands(w, slots, q, k, v, mask, opts) + (do, lse, delta)
  sink_index = len(operands)
  row_specs = _Specs(num_slots, d, mask.shape, opts, rows_first=True)
  new_q_sink, dw_lanes = _call(
      _dq_kernel, (b, n, nq, s_len // opts.block_k),
      row_specs.inputs() + [row_specs.rows(), row_specs.rows(1), row_specs.rows(1),
                            row_specs.query_slots()],
      [row_specs.query_slots(), row_specs.dw_lanes()],
      [jax.ShapeDtypeStruct(q_sink.shape, q_sink.dtype),
       jax.ShapeDtypeStruct((b, n, nq, 8, LANES), jnp.float32)],
      [(num_slots, opts.block_q, d)], opts, _cost(q, k, opts, 2, 1, True, 3),
      {sink_index: 0})(*operands, q_sink)
  col_specs = _Specs(num_slots, d, mask.shape, opts, rows_first=False)
  new_k_sink, dv = _call(
      _dkv_kernel, (b, n, s_len // opts.block_k, nq),
      col_specs.inputs() + [col_specs.rows(), col_specs.rows(1), col_specs.rows(1),
                            col_specs.key_slots()],
      [col_specs.key_slots(), col_specs.keys()],
      [jax.ShapeDtypeStruct(k_sink.shape, k_sink.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [(num_slots, opts.block_k, d), (opts.block_k, d)], opts,
      _cost(q, k, opts, 2, 2, False, 3), {sink_index: 0})(*operands, k_sink)
  dw = jnp.sum(dw_lanes[:, :, :, 0, :num_slots], axis=(0, 1, 2))
  return new_q_sink, new_k_sink, dv, dw
