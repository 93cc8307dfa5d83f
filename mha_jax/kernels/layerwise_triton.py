"""The layer-wise kernel of layerwise.py for GPUs, in Pallas-Triton.

Same mathematics and residuals (see layerwise.py); what changes is the schedule,
since a Triton program cannot revisit an output block across grid steps:

  forward   one program per (query tile, batch, head), a `fori_loop` over the
            key tiles (only up to the diagonal under `causal`) carrying the
            online-softmax state (m, l, acc);
  dq        one program per query tile, looping over key tiles; the W slot
            gradients G_l = Σ_j dS_j k_l,j are accumulated in the float32 output
            block in global memory (W accumulators would not fit in registers);
  dk, dv    one program per key tile, looping over query tiles (from the
            diagonal on under `causal`), Gᵏ_l in the output block, dV carried.

Triton needs power-of-two tiles; the slot count W is only ever indexed, so any
W works. The slot loops run over the live range only, as on TPU; the gradient
sinks are added to outside the kernels (G in float32 global memory, W slots). Not run on a GPU here (none on these machines): its tests run it in
Pallas interpret mode on CPU, which checks the program logic, not the Triton
lowering; on a CUDA machine, `tests/kernels/test_layerwise_kernel.py`'s GPU test
compiles and runs it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mha_jax.kernels.layerwise_mosaic import dot, masked, over_live_slots


def _logits(w_ref, slots_ref, q_ref, k_ref, rows, cols, opts):
  def add(slot, s):
    q = (q_ref[slot, rows, :].astype(jnp.float32) * w_ref[slot]).astype(q_ref.dtype)
    return s + dot(q, k_ref[slot, cols, :])
  return over_live_slots(slots_ref, add, jnp.zeros((opts.block_q, opts.block_k), jnp.float32))


def _allowed(mask_ref, q_start, k_start, mask_rows, mask_cols, opts):
  allowed = None
  if opts.causal:
    rows = q_start + jax.lax.broadcasted_iota(jnp.int32, (opts.block_q, opts.block_k), 0)
    cols = k_start + jax.lax.broadcasted_iota(jnp.int32, (opts.block_q, opts.block_k), 1)
    allowed = rows >= cols
  if mask_ref is not None:
    dense = mask_ref[mask_rows, mask_cols] != 0
    allowed = dense if allowed is None else allowed & dense
  return allowed


def _forward_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  o_ref, lse_ref = refs[opts.has_mask:]
  q_start = pl.program_id(0) * opts.block_q
  rows, s_len = pl.ds(0, opts.block_q), k_ref.shape[1]

  def body(j, carry):
    acc, m_prev, l_prev = carry
    cols = pl.ds(j * opts.block_k, opts.block_k)
    s = masked(_logits(w_ref, slots_ref, q_ref, k_ref, rows, cols, opts),
               _allowed(mask_ref, q_start, j * opts.block_k, rows, cols, opts))
    m_new = jnp.maximum(m_prev, s.max(axis=-1))
    p = jnp.exp(s - m_new[:, None])
    correction = jnp.exp(m_prev - m_new)
    acc = correction[:, None] * acc + dot(p.astype(v_ref.dtype), v_ref[cols, :], ((1,), (0,)))
    return acc, m_new, correction * l_prev + p.sum(axis=-1)

  num_k = (pl.cdiv(q_start + opts.block_q, opts.block_k) if opts.causal
           else s_len // opts.block_k)
  acc, m, l = jax.lax.fori_loop(
      0, num_k, body, (jnp.zeros((opts.block_q, v_ref.shape[-1]), jnp.float32),
                       jnp.full((opts.block_q,), -jnp.inf, jnp.float32),
                       jnp.zeros((opts.block_q,), jnp.float32)))
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _score_cotangent(refs, do, lse, delta, rows, cols, q_start, k_start, opts):
  w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref = refs
  allowed = _allowed(mask_ref, q_start, k_start, rows, cols, opts)
  p = jnp.exp(masked(_logits(w_ref, slots_ref, q_ref, k_ref, rows, cols, opts), allowed)
              - lse[:, None])
  ds = p * (dot(do, v_ref[cols, :]) - delta[:, None])
  return p, ds if allowed is None else jnp.where(allowed, ds, 0.0)


def _dq_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, gq_ref = refs[opts.has_mask:]
  inputs = (w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref)
  q_start = pl.program_id(0) * opts.block_q
  rows = pl.ds(0, opts.block_q)
  for slot in range(gq_ref.shape[0]):   # per slot: Triton arrays are powers of two
    gq_ref[slot] = jnp.zeros(gq_ref.shape[1:], jnp.float32)
  do, lse, delta = do_ref[...], lse_ref[...], delta_ref[...]

  def body(j, carry):
    cols = pl.ds(j * opts.block_k, opts.block_k)
    _, ds = _score_cotangent(inputs, do, lse, delta, rows, cols, q_start, j * opts.block_k,
                             opts)

    def add(slot, _):
      gq_ref[slot] += dot(ds.astype(k_ref.dtype), k_ref[slot, cols, :], ((1,), (0,)))
    over_live_slots(slots_ref, add, None)
    return carry

  num_k = (pl.cdiv(q_start + opts.block_q, opts.block_k) if opts.causal
           else k_ref.shape[1] // opts.block_k)
  jax.lax.fori_loop(0, num_k, body, 0)


def _dkv_kernel(w_ref, slots_ref, q_ref, k_ref, v_ref, *refs, opts):
  mask_ref = refs[0] if opts.has_mask else None
  do_ref, lse_ref, delta_ref, gk_ref, dv_ref = refs[opts.has_mask:]
  inputs = (w_ref, slots_ref, q_ref, k_ref, v_ref, mask_ref)
  k_start = pl.program_id(0) * opts.block_k
  cols = pl.ds(0, opts.block_k)
  for slot in range(gk_ref.shape[0]):
    gk_ref[slot] = jnp.zeros(gk_ref.shape[1:], jnp.float32)

  def body(i, dv):
    rows = pl.ds(i * opts.block_q, opts.block_q)
    p, ds = _score_cotangent(inputs, do_ref[rows, :], lse_ref[rows], delta_ref[rows], rows,
                             cols, i * opts.block_q, k_start, opts)

    def add(slot, _):
      gk_ref[slot] += dot(ds.astype(q_ref.dtype), q_ref[slot, rows, :], ((0,), (0,)))
    over_live_slots(slots_ref, add, None)
    return dv + dot(p.astype(do_ref.dtype), do_ref[rows, :], ((0,), (0,)))

  first_q = k_start // opts.block_q if opts.causal else 0
  dv = jax.lax.fori_loop(first_q, q_ref.shape[1] // opts.block_q, body,
                         jnp.zeros((opts.block_k, v_ref.shape[-1]), jnp.float32))
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, opts):
  kwargs = {}
  if not opts.interpret:
    from jax.experimental.pallas import triton as plgpu
    kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=4, num_stages=2)
  return pl.pallas_call(functools.partial(kernel, opts=opts), grid=grid, in_specs=in_specs,
                        out_specs=out_specs, out_shape=out_shape, interpret=opts.interpret,
                        name=f"layerwise_triton{kernel.__name__}", **kwargs)


class _Specs:
  """BlockSpecs for a grid (tile, b, n): whole key (or query) axes per program."""

  def __init__(self, q, k, mask_shape, opts, rows_first):
    self.slots, _, _, self.t, self.d = q.shape
    self.s_len, self.opts, self.rows_first = k.shape[3], opts, rows_first
    self.mask_bn = (mask_shape[0] > 1, mask_shape[1] > 1)

  def _bn(self, b, n):
    return (b if self.mask_bn[0] else 0, n if self.mask_bn[1] else 0)

  def inputs(self):
    o = self.opts
    if self.rows_first:
      q_spec = pl.BlockSpec((self.slots, None, None, o.block_q, self.d),
                            lambda i, b, n: (0, b, n, i, 0))
      k_spec = pl.BlockSpec((self.slots, None, None, self.s_len, self.d),
                            lambda i, b, n: (0, b, n, 0, 0))
      v_spec = pl.BlockSpec((None, None, self.s_len, self.d), lambda i, b, n: (b, n, 0, 0))
      mask_spec = pl.BlockSpec((None, None, o.block_q, self.s_len),
                               lambda i, b, n: self._bn(b, n) + (i, 0))
    else:
      q_spec = pl.BlockSpec((self.slots, None, None, self.t, self.d),
                            lambda j, b, n: (0, b, n, 0, 0))
      k_spec = pl.BlockSpec((self.slots, None, None, o.block_k, self.d),
                            lambda j, b, n: (0, b, n, j, 0))
      v_spec = pl.BlockSpec((None, None, o.block_k, self.d), lambda j, b, n: (b, n, j, 0))
      mask_spec = pl.BlockSpec((None, None, self.t, o.block_k),
                               lambda j, b, n: self._bn(b, n) + (0, j))
    specs = [pl.BlockSpec((self.slots,), lambda *_: (0,)), pl.BlockSpec((2,), lambda *_: (0,)),
             q_spec, k_spec, v_spec]
    return specs + ([mask_spec] if o.has_mask else [])

  def rows(self, width=None):
    """o, dO (width D) or lse, δ (width None): a query tile, or all rows."""
    size = self.opts.block_q if self.rows_first else self.t
    tile = (lambda i, b, n: (b, n, i)) if self.rows_first else (lambda j, b, n: (b, n, 0))
    if width is None:
      return pl.BlockSpec((None, None, size), tile)
    return pl.BlockSpec((None, None, size, width), lambda *g: tile(*g) + (0,))


def forward(w, slots, q, k, v, mask, opts):
  """As layerwise.forward, lse [B, N, T] float32."""
  _, b, n, t, d = q.shape
  sp = _Specs(q, k, mask.shape, opts, rows_first=True)
  operands = (w, slots, q, k, v) + ((mask,) if opts.has_mask else ())
  return _call(_forward_kernel, (t // opts.block_q, b, n), sp.inputs(), [sp.rows(d), sp.rows()],
               [jax.ShapeDtypeStruct((b, n, t, d), v.dtype),
                jax.ShapeDtypeStruct((b, n, t), jnp.float32)], opts)(*operands)


def backward(w, slots, q, k, v, mask, o, lse, do, q_sink, k_sink, opts):
  """As layerwise.backward: (q_sink + dq, k_sink + dk, dV, dw)."""
  _, b, n, t, d = q.shape
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  operands = (w, slots, q, k, v) + ((mask,) if opts.has_mask else ()) + (do, lse, delta)
  rows = _Specs(q, k, mask.shape, opts, rows_first=True)
  gq_spec = pl.BlockSpec((q.shape[0], None, None, opts.block_q, d),
                         lambda i, b_, n_: (0, b_, n_, i, 0))
  gq = _call(_dq_kernel, (t // opts.block_q, b, n),
             rows.inputs() + [rows.rows(d), rows.rows(), rows.rows()], gq_spec,
             jax.ShapeDtypeStruct(q.shape, jnp.float32), opts)(*operands)
  cols = _Specs(q, k, mask.shape, opts, rows_first=False)
  gk_spec = pl.BlockSpec((k.shape[0], None, None, opts.block_k, d),
                         lambda j, b_, n_: (0, b_, n_, j, 0))
  dv_spec = pl.BlockSpec((None, None, opts.block_k, d), lambda j, b_, n_: (b_, n_, j, 0))
  gk, dv = _call(_dkv_kernel, (k.shape[3] // opts.block_k, b, n),
                 cols.inputs() + [cols.rows(d), cols.rows(), cols.rows()], [gk_spec, dv_spec],
                 [jax.ShapeDtypeStruct(k.shape, jnp.float32),
                  jax.ShapeDtypeStruct(v.shape, v.dtype)], opts)(*operands)
  dw = jnp.sum(q.astype(jnp.float32) * gq, axis=(1, 2, 3, 4))
  index = jnp.arange(w.shape[0])
  live = ((index >= slots[0]) & (index < slots[1]))[:, None, None, None, None]
  into_sink = lambda sink, g: jnp.where(live, sink + w[:, None, None, None, None] * g,
                                        sink).astype(sink.dtype)
  return into_sink(q_sink, gq), into_sink(k_sink, gk), dv, jnp.where(live[:, 0, 0, 0, 0], dw, 0)


def check_options(opts):
  """Triton tiles must be powers of two."""
  for name in ("block_q", "block_k"):
    size = getattr(opts, name)
    if size & (size - 1):
      raise ValueError(f"{name}={size} is not a power of two (Triton tiles must be)")
