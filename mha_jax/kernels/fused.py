"""One MHA layer as a fused Pallas kernel: the materialised path without the
attention probabilities in memory.

Per (batch, head, query tile) the forward kernel walks the key tiles and, per tile,

    H_n = c_prev · H_{n−1} + s̃_n        s̃_n = (c_s · scale · q) kᵀ
    online softmax of mask(H_n), accumulating A·V (FlashAttention-2 recurrence),

writing H_n (the next layer needs it) and the row log-sum-exp, never the
probabilities. c_prev = α′ and c_s = 1−α′, except on a layer that starts a chain
(`restart`, or no H_{n−1} given): c_prev = 0 and c_s = 1−α′ (h0 "zeros") or 1
(h0 "first_scores").

The custom VJP saves H_{n−1} (not H_n: the next layer saves H_n as its own
H_{n−1}, so a layer scan stores each H once) and the lse, recomputes the H_n
tile as the forward did, then P = exp(mask(H_n) − lse):

    dS = dH_n + mask ⊙ P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))     cotangent of H_n
    dH_{n−1} = c_prev · dS,   dc_prev = Σ dS ⊙ H_{n−1},
    dq̃ = dS K,   dK = dSᵀ q̃,   dV = Pᵀ dO

in two kernels (one over query tiles accumulating dq̃ and the row sums of
dS ⊙ H_{n−1}, and writing dH_{n−1}; one over key tiles accumulating dK, dV).
dα′ is dc_prev plus what autodiff carries back through c_s = 1−α′ (q̃ is
scaled outside the kernel).

`hidden_dtype=bfloat16` stores H_n (and hence the carry) in bf16: the softmax
reads the rounded H, so forward and backward agree with each other; relative to
float32 each H entry carries a rounding error ≤ 2⁻⁸·|H| (bf16 has 8 significand
bits), i.e. attention weights change by a factor within exp(±2⁻⁸·max|H|) per
layer, and the error of H_{n−1} decays as α′ⁿ through later layers.

On CPU the kernels run in Pallas interpret mode (for tests); on TPU they compile
with Mosaic, per shard inside `jax.shard_map` (Mosaic kernels cannot be
partitioned automatically). On GPU the call is refused (`check_backend`). A GPU
version would need the same three kernels in Pallas-Triton or Mosaic-GPU:
Triton has no revisited output blocks, so the accumulators become in-kernel
loops over the reduction tiles (one program per query tile for the forward and
dq̃, one per key tile for dK/dV), and the H tiles should be read/written with
block pointers so H_{n−1}→H_n streams at HBM speed.
"""

from __future__ import annotations

import functools
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# As attention.masked_softmax: a finite floor, so all-masked rows come out uniform.
MASKED = float(jnp.finfo(jnp.float32).min)
# What `attention.implementation` may be where this kernel cannot compile (GPU).
PORTABLE_IMPLEMENTATIONS = ("naive", "factorized", "auto")


def _tile(length, preferred):
  """The first of (preferred, 256, 512) dividing `length`, else the whole length."""
  for size in (preferred, 256, 512):
    if length % size == 0:
      return size
  return length


def _probabilities(h_tile, mask_tile, lse):
  logits = jnp.where(mask_tile != 0, h_tile.astype(jnp.float32), MASKED)
  return jnp.exp(logits - lse)


def _dot(a, b, contract=((1,), (0,))):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _hidden_tile(coef, q, k, hprev, dtype):
  """H_n = c_prev · H_{n−1} + q̃ kᵀ of one tile, rounded to the stored dtype; the
  backward kernels recompute it with the same operations, so they see the H the
  forward's softmax read."""
  s_QxK = _dot(q, k, ((1,), (1,)))
  return (coef * hprev.astype(jnp.float32) + s_QxK).astype(dtype)


def _forward_kernel(coef_ref, q_ref, k_ref, v_ref, hprev_ref, mask_ref,
                    o_ref, h_ref, lse_ref, m_scr, l_scr, acc_scr):
  key_tile = pl.program_id(3)

  @pl.when(key_tile == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  h_QxK = _hidden_tile(coef_ref[0], q_ref[0, 0], k_ref[0, 0], hprev_ref[0, 0], h_ref.dtype)
  h_ref[0, 0] = h_QxK
  logits = jnp.where(mask_ref[0, 0] != 0, h_QxK.astype(jnp.float32), MASKED)
  m_prev = m_scr[...]
  m_new = jnp.maximum(m_prev, logits.max(axis=-1, keepdims=True))
  p_QxK = jnp.exp(logits - m_new)
  correction = jnp.exp(m_prev - m_new)
  l_scr[...] = correction * l_scr[...] + p_QxK.sum(axis=-1, keepdims=True)
  acc_scr[...] = correction * acc_scr[...] + _dot(p_QxK.astype(v_ref.dtype), v_ref[0, 0])
  m_scr[...] = m_new

  @pl.when(key_tile == pl.num_programs(3) - 1)
  def _finish():
    o_ref[0, 0] = (acc_scr[...] / l_scr[...]).astype(o_ref.dtype)
    lse_ref[0, 0] = m_scr[...] + jnp.log(l_scr[...])


def _score_cotangent(coef, q, k, v, hprev, mask, do, dh, lse, delta, hidden_dtype):
  """(P, dS) of one tile, H_n recomputed from H_{n−1}: see the module docstring."""
  h_QxK = _hidden_tile(coef, q, k, hprev, hidden_dtype)
  p_QxK = _probabilities(h_QxK, mask, lse)
  dp_QxK = _dot(do, v, ((1,), (1,)))
  ds_QxK = jnp.where(mask != 0, p_QxK * (dp_QxK - delta), 0.0)
  return p_QxK, dh.astype(jnp.float32) + ds_QxK


def _dq_kernel(coef_ref, q_ref, k_ref, v_ref, hprev_ref, mask_ref, do_ref, dh_ref, lse_ref,
               delta_ref, dq_ref, dhprev_ref, dcoef_ref, dq_scr, dcoef_scr):
  key_tile = pl.program_id(3)

  @pl.when(key_tile == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
    dcoef_scr[...] = jnp.zeros(dcoef_scr.shape, jnp.float32)

  hprev_QxK = hprev_ref[0, 0]
  _, ds_QxK = _score_cotangent(coef_ref[0], q_ref[0, 0], k_ref[0, 0], v_ref[0, 0], hprev_QxK,
                               mask_ref[0, 0], do_ref[0, 0], dh_ref[0, 0], lse_ref[0, 0],
                               delta_ref[0, 0], dh_ref.dtype)
  dhprev_ref[0, 0] = (coef_ref[0] * ds_QxK).astype(dhprev_ref.dtype)
  dcoef_scr[...] += jnp.sum(ds_QxK * hprev_QxK.astype(jnp.float32), axis=-1, keepdims=True)
  dq_scr[...] += _dot(ds_QxK.astype(k_ref.dtype), k_ref[0, 0])

  @pl.when(key_tile == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[0, 0] = dq_scr[...].astype(dq_ref.dtype)
    dcoef_ref[0, 0] = dcoef_scr[...]


def _dkv_kernel(coef_ref, q_ref, k_ref, v_ref, hprev_ref, mask_ref, do_ref, dh_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, dk_scr, dv_scr):
  query_tile = pl.program_id(3)

  @pl.when(query_tile == 0)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  p_QxK, ds_QxK = _score_cotangent(coef_ref[0], q_ref[0, 0], k_ref[0, 0], v_ref[0, 0],
                                   hprev_ref[0, 0], mask_ref[0, 0], do_ref[0, 0], dh_ref[0, 0],
                                   lse_ref[0, 0], delta_ref[0, 0], dh_ref.dtype)
  dk_scr[...] += _dot(ds_QxK.astype(q_ref.dtype), q_ref[0, 0], ((0,), (0,)))
  dv_scr[...] += _dot(p_QxK.astype(do_ref.dtype), do_ref[0, 0], ((0,), (0,)))

  @pl.when(query_tile == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[0, 0] = dk_scr[...].astype(dk_ref.dtype)
    dv_ref[0, 0] = dv_scr[...].astype(dv_ref.dtype)


class _Specs:
  """BlockSpecs of the [B, N, T, ·] operands for a grid (b, n, i, j); `rows_first`
  says whether i walks query tiles (forward, dq̃) or key tiles (dK, dV)."""

  def __init__(self, q_tile, k_tile, head_dim, mask_shape, rows_first):
    self.q_tile, self.k_tile, self.d, self.rows_first = q_tile, k_tile, head_dim, rows_first
    self.mask_batch, self.mask_heads = mask_shape[0] > 1, mask_shape[1] > 1

  def _qk(self, i, j):
    return (i, j) if self.rows_first else (j, i)

  def rows(self, width=None):     # per query row: q, o, dO, lse, δ
    return pl.BlockSpec((1, 1, self.q_tile, width or self.d),
                        lambda b, n, i, j: (b, n, self._qk(i, j)[0], 0))

  def keys(self):                 # per key row: k, v
    return pl.BlockSpec((1, 1, self.k_tile, self.d),
                        lambda b, n, i, j: (b, n, self._qk(i, j)[1], 0))

  def scores(self):               # H_{n−1}, H_n, dH tiles
    return pl.BlockSpec((1, 1, self.q_tile, self.k_tile),
                        lambda b, n, i, j: (b, n) + self._qk(i, j))

  def mask(self):
    return pl.BlockSpec((1, 1, self.q_tile, self.k_tile),
                        lambda b, n, i, j: ((b if self.mask_batch else 0,
                                             n if self.mask_heads else 0) + self._qk(i, j)))

  def scalar(self):
    return pl.BlockSpec(memory_space=pltpu.SMEM)


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, interpret, matmuls, bntsd):
  """`matmuls`: how many T×S×D products per (batch, head) of shape `bntsd` the
  kernel computes, so XLA's cost analysis (blind inside a custom call) counts them."""
  b, n, t, s_len, d = bntsd

  def run(*operands):
    cost = pl.CostEstimate(
        flops=2 * matmuls * b * n * t * s_len * d, transcendentals=b * n * t * s_len,
        bytes_accessed=sum(x.size * x.dtype.itemsize
                           for x in jax.tree.leaves((operands, out_shape))))
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        cost_estimate=cost,
        scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret)(*operands)
  return run


class _Options(typing.NamedTuple):
  hidden_dtype: jnp.dtype
  block: int          # preferred tile edge (128 fills the TPU's MXU)
  interpret: bool


def _forward(coef, q, k, v, hprev, mask, opts):
  (b, n, t, d), s_len = q.shape, k.shape[2]
  tq, tk = _tile(t, opts.block), _tile(s_len, opts.block)
  sp = _Specs(tq, tk, d, mask.shape, rows_first=True)
  return _call(
      _forward_kernel, (b, n, t // tq, s_len // tk),
      [sp.scalar(), sp.rows(), sp.keys(), sp.keys(), sp.scores(), sp.mask()],
      [sp.rows(), sp.scores(), sp.rows(1)],
      [jax.ShapeDtypeStruct(q.shape, v.dtype),
       jax.ShapeDtypeStruct(hprev.shape, opts.hidden_dtype),
       jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32)],
      [(tq, 1), (tq, 1), (tq, d)], opts.interpret, 2,
      (b, n, t, s_len, d))(coef, q, k, v, hprev, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused(coef, q, k, v, hprev, mask, opts):
  o, h, _ = _forward(coef, q, k, v, hprev, mask, opts)
  return o, h


def _fused_fwd(coef, q, k, v, hprev, mask, opts):
  o, h, lse = _forward(coef, q, k, v, hprev, mask, opts)
  return (o, h), (coef, q, k, v, hprev, mask, o, lse)


def _fused_bwd(opts, residuals, cotangents):
  coef, q, k, v, hprev, mask, o, lse = residuals
  do, dh = cotangents
  (b, n, t, d), s_len = q.shape, k.shape[2]
  tq, tk = _tile(t, opts.block), _tile(s_len, opts.block)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  operands = (coef, q, k, v, hprev, mask, do, dh, lse, delta)

  def in_specs(sp):
    return [sp.scalar(), sp.rows(), sp.keys(), sp.keys(), sp.scores(), sp.mask(), sp.rows(),
            sp.scores(), sp.rows(1), sp.rows(1)]

  rows = _Specs(tq, tk, d, mask.shape, rows_first=True)
  dq, dhprev, dcoef_rows = _call(
      _dq_kernel, (b, n, t // tq, s_len // tk), in_specs(rows),
      [rows.rows(), rows.scores(), rows.rows(1)],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(hprev.shape, hprev.dtype),
       jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32)],
      [(tq, d), (tq, 1)], opts.interpret, 3, (b, n, t, s_len, d))(*operands)
  cols = _Specs(tq, tk, d, mask.shape, rows_first=False)
  dk, dv = _call(
      _dkv_kernel, (b, n, s_len // tk, t // tq), in_specs(cols),
      [cols.keys(), cols.keys()],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [(tk, d), (tk, d)], opts.interpret, 4, (b, n, t, s_len, d))(*operands)
  # H_n = c_prev · H_{n−1} + …, so dc_prev = Σ dS ⊙ H_{n−1} (row sums from the dq̃ kernel).
  dcoef = jnp.sum(dcoef_rows).reshape(coef.shape).astype(coef.dtype)
  return dcoef, dq, dk, dv, dhprev, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _per_shard(fn, *args):
  """Runs the Pallas kernel on each shard of the current mesh (batch and heads
  split as the logical rules say), or directly without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  bn = nn.logical_to_mesh_axes(("batch", "heads"))
  spec_bn = jax.sharding.PartitionSpec(*bn, None, None)
  coef, q, k, v, hprev, mask = args
  mask_spec = jax.sharding.PartitionSpec(*(a if m > 1 else None for a, m in zip(bn, mask.shape)),
                                         None, None)
  in_specs = (jax.sharding.PartitionSpec(), spec_bn, spec_bn, spec_bn, spec_bn, mask_spec)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=(spec_bn, spec_bn),
                       check_vma=False)(*args)


def check_backend(backend, interpret):
  """Refuses a compiled kernel on a backend without one: the kernels are Mosaic-TPU
  `pallas_call`s (TPU scratch memory, SMEM scalars, TPU compiler parameters), so on
  GPU only interpret mode (tests, not speed) runs them."""
  if backend in ("cpu", "tpu") or interpret:
    return
  raise ValueError(
      f"attention.implementation='fused' is a Mosaic-TPU Pallas kernel and cannot be "
      f"compiled for backend {backend!r}; on {backend!r} use one of {PORTABLE_IMPLEMENTATIONS} "
      f"(fused runs on 'tpu', and in interpret mode on 'cpu')")


def fused_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, h_prev_BxNxTxS, *,
                             alpha_hidden, restart=False, h0="zeros", mask=None, scale=None,
                             hidden_dtype=jnp.float32, block=128, interpret=None):
  """`attention.hopfield_attention` (no dropout) as one fused kernel per layer.

  Returns (out [B, T, N, D], H_n [B, N, T, S] in `hidden_dtype`). `mask` (True =
  may attend) broadcasts to [B, N, T, S]. `interpret` None: interpret on CPU,
  Mosaic on TPU (chosen when the computation is lowered, so an ahead-of-time
  TPU compile on a CPU host gets the Mosaic kernel); a GPU backend is refused
  (`check_backend`). `block`: preferred tile edge. `h_prev` None starts a chain,
  as `restart` does.
  """
  check_backend(jax.default_backend(), interpret)
  batch, length, _, head_dim = q_BxTxNxD.shape
  s_len = k_BxSxNxD.shape[1]
  if scale is None:
    scale = head_dim ** -0.5
  starts_chain = jnp.logical_or(restart, h_prev_BxNxTxS is None)
  score_weight = jnp.where(starts_chain, 1.0 if h0 == "first_scores" else 1.0 - alpha_hidden,
                           1.0 - alpha_hidden)
  coef = jnp.reshape(jnp.where(starts_chain, 0.0, alpha_hidden), (1,)).astype(jnp.float32)
  q = jnp.swapaxes(q_BxTxNxD * (score_weight * scale).astype(q_BxTxNxD.dtype), 1, 2)
  k, v = jnp.swapaxes(k_BxSxNxD, 1, 2), jnp.swapaxes(v_BxSxNxD, 1, 2)
  if mask is None:
    mask = jnp.ones((1, 1, length, s_len), jnp.int8)
  mask = jnp.broadcast_to(mask, mask.shape[:2] + (length, s_len)).astype(jnp.int8)
  if h_prev_BxNxTxS is None:
    hprev = jnp.zeros((batch, q.shape[1], length, s_len), hidden_dtype)
  else:
    hprev = h_prev_BxNxTxS.astype(hidden_dtype)

  def run(interpret):
    opts = _Options(jnp.dtype(hidden_dtype), block, interpret)
    return lambda *args: _per_shard(lambda *a: _fused(*a, opts), *args)

  args = (coef, q, k, v, hprev, mask)
  if interpret is None:
    out, h = jax.lax.platform_dependent(*args, cpu=run(True), default=run(False))
  else:
    out, h = run(interpret)(*args)
  return jnp.swapaxes(out, 1, 2), h
