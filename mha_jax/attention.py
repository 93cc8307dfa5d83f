"""Modern Hopfield Attention as pure functions (spec §2, the paper's Eq. 10).

Per head, at layer n:

    s_n = scale · Q_n K_nᵀ                      scores          [B, N, T, S]
    H_n = α′ · H_{n−1} + (1−α′) · s_n           hidden state    [B, N, T, S]
    A_n = softmax(mask(H_n))                    attention       [B, N, T, S]
    out = A_n V_n                                               [B, T, N, D]

B batch, T query length, S key length, N heads, D head dim. H is float32 whatever
the compute dtype, and never holds −inf: masks act only at the softmax, because
α′·(−inf) would turn into NaN on the next layer. α′ = 0 is standard attention.

Everything here is a pure function of arrays: use it under jit, vmap and grad
without Flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Where a chain of hidden states starts (a random H_0 is passed in as h_prev instead).
CHAIN_STARTS = ("zeros", "first_scores")


def attention_scores(q_BxTxNxD, k_BxSxNxD, scale=None):
  """s = scale · Q Kᵀ in float32 (float64 for float64 inputs), [B, N, T, S];
  scale defaults to 1/√D."""
  if scale is None:
    scale = q_BxTxNxD.shape[-1] ** -0.5
  acc = state_dtype(q_BxTxNxD.dtype)
  s_BxNxTxS = jnp.einsum("btnd,bsnd->bnts", q_BxTxNxD, k_BxSxNxD, preferred_element_type=acc)
  return s_BxNxTxS * jnp.asarray(scale, acc)


def state_dtype(dtype):
  """Scores, H and softmax: float32, or wider if the inputs are (analysis in float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def update_hidden_state(h_prev_BxNxTxS, s_BxNxTxS, alpha_hidden, score_weight=None):
  """H_n = α′ H_{n−1} + (1−α′) s_n: one Euler step of the hidden-state equation.

  `score_weight` replaces (1−α′) for relatives of MHA: α′ = 1 with weight 1 is
  RealFormer's residual attention, H_n = H_{n−1} + s_n.
  """
  if score_weight is None:
    score_weight = 1.0 - alpha_hidden
  return alpha_hidden * h_prev_BxNxTxS + score_weight * s_BxNxTxS


def masked_softmax(logits_BxNxTxS, mask=None):
  """Row softmax over keys in float32; `mask` True = may attend.

  A row with no allowed key gets uniform weights rather than NaN (padding rows).
  """
  logits = logits_BxNxTxS.astype(state_dtype(logits_BxNxTxS.dtype))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits, axis=-1)


def hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, h_prev_BxNxTxS, *,
                       alpha_hidden, mask=None, scale=None, h0="zeros",
                       restart=False, dropout_rate=0.0, dropout_rng=None,
                       score_weight=None):
  """One layer of Modern Hopfield Attention; returns (out [B,T,N,D], H_n [B,N,T,S]).

  Args:
    q_BxTxNxD, k_BxSxNxD, v_BxSxNxD: queries, keys, values (any float dtype).
    h_prev_BxNxTxS: H_{n−1} in float32, or None before the first layer.
    alpha_hidden: α′ in [0, 1] (a Python float or a traced scalar, so it vmaps).
    mask: boolean, True = may attend, broadcastable to [B, N, T, S].
    scale: score scale; default 1/√D.
    h0: what H_{n−1} is where a chain of hidden states starts (h_prev None, or
      `restart` True): "zeros" → H_n = (1−α′)s_n; "first_scores" → H_n = s_n, so
      the layer is plain attention. A caller wanting random H_0 passes it as
      h_prev.
    restart: bool, possibly traced: this layer starts a new chain and ignores
      h_prev (reset-every-N studies, and layer 1 inside `lax.scan`).
    dropout_rate, dropout_rng: dropout on the attention weights (after the
      softmax: H keeps the pre-softmax logits); no rng means deterministic.
    score_weight: weight of s_n in H_n; None means (1−α′), the MHA update.
  """
  if h0 not in CHAIN_STARTS:
    raise ValueError(f"h0={h0!r} is not a known chain start; allowed: {CHAIN_STARTS}")
  s_BxNxTxS = attention_scores(q_BxTxNxD, k_BxSxNxD, scale)
  start_BxNxTxS = s_BxNxTxS if h0 == "first_scores" else jnp.zeros_like(s_BxNxTxS)
  if h_prev_BxNxTxS is None:
    h_prev_BxNxTxS = start_BxNxTxS
  else:
    h_prev_BxNxTxS = jnp.where(restart, start_BxNxTxS,
                               h_prev_BxNxTxS.astype(s_BxNxTxS.dtype))
  h_BxNxTxS = update_hidden_state(h_prev_BxNxTxS, s_BxNxTxS, alpha_hidden, score_weight)

  weights_BxNxTxS = masked_softmax(h_BxNxTxS, mask)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights_BxNxTxS.shape)
    weights_BxNxTxS = jnp.where(keep, weights_BxNxTxS / (1.0 - dropout_rate), 0.0)
  out_BxTxNxD = jnp.einsum("bnts,bsnd->btnd", weights_BxNxTxS.astype(v_BxSxNxD.dtype),
                           v_BxSxNxD)
  return out_BxTxNxD, h_BxNxTxS


def restart_flags(num_layers, *, reset_every=0, carried_h0=False):
  """[L] bools: where a layer starts a new chain of hidden states.

  Layer 1 starts one unless H_0 is itself carried in (a random H_0, which
  layer 1 must not discard); `reset_every` = N restarts every N layers.
  """
  layer_L = np.arange(num_layers)
  if reset_every:
    return layer_L % reset_every == 0
  return (layer_L == 0) & (not carried_h0)


def hidden_noise(seed, num_heads, query_positions_BxT, key_positions_BxS):
  """[B, N, T, S] float32 N(0, 1) draws, entry (n, i, j) a function of (seed, n, query
  position i, key position j) alone, so a row is the same whatever the sequence length:
  a prefix, the full sequence and one cached decoding row all see the same H_0."""
  key = jax.random.key(seed)

  def draw_N(query_position, key_position):
    return jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, query_position), key_position), (num_heads,))

  per_key = jax.vmap(draw_N, in_axes=(None, 0))
  per_query = jax.vmap(per_key, in_axes=(0, None))
  noise_BxTxSxN = jax.vmap(per_query)(query_positions_BxT, key_positions_BxS)
  return jnp.moveaxis(noise_BxTxSxN, -1, 1)


def initial_hidden_state(batch, num_heads, length, *, noise_std=None, noise_seed=0,
                         query_positions=None, key_positions=None):
  """H_0 [B, N, T, S] float32: zeros, or with `noise_std` a fixed N(0, σ²) draw per head
  and (query, key) position pair (`hidden_noise`), the same for every example and
  batch size, so train, eval and cached decoding see one H_0.

  Positions ([B, T] and [B, S] ints) default to 0 … length−1; S = T unless key
  positions are given (cached decoding: T new queries against S cache slots).
  """
  default = jnp.arange(length)[None]
  query_positions = default if query_positions is None else query_positions
  key_positions = query_positions if key_positions is None else key_positions
  shape = (batch, num_heads, query_positions.shape[1], key_positions.shape[1])
  if noise_std is None:
    return jnp.zeros(shape, jnp.float32)
  noise = hidden_noise(noise_seed, num_heads, query_positions, key_positions)
  return jnp.broadcast_to(noise_std * noise, shape)


def dot_product_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, *, mask=None, scale=None,
                          dropout_rate=0.0, dropout_rng=None):
  """Standard softmax attention: `hopfield_attention` with α′ = 0 and no state."""
  out_BxTxNxD, _ = hopfield_attention(
      q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, None, alpha_hidden=0.0, mask=mask,
      scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  return out_BxTxNxD


def causal_mask(length):
  """[1, 1, T, T] boolean, True on and below the diagonal."""
  return jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]


def padding_mask(valid_BxT):
  """[B, 1, 1, T] key mask from a [B, T] boolean 'token is real' array."""
  return valid_BxT[:, None, None, :].astype(jnp.bool_)


def value_residual_mix(v_first_BxSxNxD, v_BxSxNxD, lam):
  """ResFormer's value residual (Zhou et al., 2024, "Value Residual Learning For
  Alleviating Attention Concentration In Transformers", arXiv 2410.17897):

      V_n ← λ V_1 + (1−λ) V_n

  V_1 the first layer's values, carried through the stack; at layer 1 the mix is
  V_1 itself. λ is fixed (no parameters).
  """
  return lam * v_first_BxSxNxD + (1.0 - lam) * v_BxSxNxD


def gated_residual(x, u, gate):
  """ReZero (Bachlechner et al., 2021, "ReZero is All You Need", UAI):
  x ← x + g·u, g a learnable scalar per layer initialised at 0, so the branch
  starts as the identity map."""
  return x + gate.astype(u.dtype) * u


def residual_update(x, u, alpha, form):
  """The attention residual (spec §2): how the layer's output u re-enters x.

  convex:        x ← α x + (1−α) u   (Euler step of the visible-state equation)
  scaled_branch: x ← x + (1−α) u
  standard:      x ← x + u
  """
  if form == "convex":
    return alpha * x + (1.0 - alpha) * u
  if form == "scaled_branch":
    return x + (1.0 - alpha) * u
  if form == "standard":
    return x + u
  raise ValueError(f"residual={form!r}; allowed: 'convex', 'scaled_branch', 'standard'")
