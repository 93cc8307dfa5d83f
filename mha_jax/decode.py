"""Autoregressive generation for GPT-2 and LLaMA, standard attention and MHA.

Cached decoding keeps, per layer, the keys and values of every token so far in a
fixed-size "cache" collection (`models.kv_cache.cached_keys_values`). A new token's
row of the hidden state is rebuilt layer by layer from that token's queries and
the cached keys,

    H_n[t, :] = α′ · H_{n−1}[t, :] + (1−α′) · scale · q_n[t] K_nᵀ,

because row t of every H_n depends on row t of H_{n−1} and on nothing else: the
carried state is [B, N, T_new, S], and MHA needs no more cache than standard
attention. Where a chain starts (layer 1, every `reset_every` layers) the row
starts as the policy says: zeros, the layer's own scores ("first_scores"), or
row t of the fixed H_0 draw ("noise"), which `attention.hidden_noise` makes a
function of (query position, key position) alone, so no H_0 is cached either.

Prompts are left-padded to one length P (`prompt_valid` marks real tokens); a
token's position counts the real tokens before it, as in Hugging Face, so a
padded row generates what the prompt alone would. `prefill` runs the prompt
through the model and fills the cache; `decode_step` feeds one token per row;
`generate` jits both with a `lax.scan` over the new tokens. `generate_uncached`
recomputes the full forward at every step: the reference for tests and for
benchmarks/decode_speed.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mha_jax import kinds
from mha_jax.models import decoder


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a token is drawn from the logits: temperature 0 is greedy (argmax);
  top_k = 0 and top_p = 1 switch those filters off."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = no top-k filter)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = no nucleus filter)")


def sample_token(key, logits_BxV, sampling: Sampling):
  """One token id per row [B] from float32 logits: greedy, or temperature with the
  top-k and nucleus (top-p: the fewest most-likely tokens whose probability reaches p)
  filters applied in that order."""
  if sampling.temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, min(sampling.top_k, logits_BxV.shape[-1]))[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if sampling.top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = jnp.where(mass_before_BxV < sampling.top_p, sorted_BxV, jnp.inf)
    cutoff_Bx1 = jnp.min(kept_BxV, axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


class DecodeState(NamedTuple):
  """Everything a decode step needs besides the params."""
  cache: dict           # the model's "cache" collection: per layer key/value [B, S, N, D], index
  valid_BxS: jax.Array  # which cache slots hold real tokens (left padding: False)
  next_slot: jax.Array  # int32 scalar: the slot the next token is written to


def _decoding_model(model):
  """The model as decoding runs it: no remat (nothing is differentiated), and MHA's
  rows of H computed directly (`naive`), which the factorised and fused kernels
  equal; a truncated factorised window computes other numbers, so it is refused."""
  stack = model.stack
  att = stack.attention
  if not kinds.get(att.kind).decode:
    raise ValueError(f"attention.kind={att.kind!r} has no cached decoding; kinds that do: "
                     f"{kinds.names(decode=True)}")
  if att.hidden_window and att.hidden_window < stack.num_layers:
    raise ValueError(f"attention.hidden_window={att.hidden_window} < num_layers="
                     f"{stack.num_layers}: cached decoding rebuilds the exact H rows, which "
                     "a truncated window does not compute; decode with hidden_window=0")
  if att.kind == "hopfield":
    att = dataclasses.replace(att, implementation="naive", hidden_window=0,
                              hidden_dtype="float32")
  return model.clone(stack=dataclasses.replace(stack, remat_policy="none", attention=att))


def init_cache(model, batch, cache_size):
  """A zero cache of `cache_size` slots (its shapes come from `model.init` without
  running it)."""
  model = _decoding_model(model)
  tokens = jnp.zeros((batch, cache_size), jnp.int32)
  shapes = jax.eval_shape(functools.partial(
      model.init, decode=True, padding_mask=jnp.ones((batch, cache_size), jnp.bool_),
      positions=jnp.zeros((batch, cache_size), jnp.int32)), jax.random.key(0), tokens)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _apply(model, params, state, tokens_BxT):
  """Feed T new tokens per row at state.next_slot; returns (logits [B, T, V], state)."""
  length = tokens_BxT.shape[1]
  positions_BxT = jax.lax.dynamic_slice_in_dim(decoder.positions_from_mask(state.valid_BxS),
                                               state.next_slot, length, axis=1)
  (logits_BxTxV, _), mutated = _decoding_model(model).apply(
      {"params": params, "cache": state.cache}, tokens_BxT, positions=positions_BxT,
      padding_mask=state.valid_BxS, decode=True, mutable=["cache"])
  return logits_BxTxV, state._replace(cache=mutated["cache"],
                                          next_slot=state.next_slot + length)


def prefill(model, params, prompt_BxP, prompt_valid_BxP, cache_size):
  """Run the left-padded prompts through the model into a fresh cache of
  `cache_size` slots; returns (logits of the last prompt token [B, V], state)."""
  batch, length = prompt_BxP.shape
  if cache_size < length:
    raise ValueError(f"cache_size={cache_size} is shorter than the prompt ({length} tokens)")
  valid_BxS = jnp.concatenate([prompt_valid_BxP.astype(jnp.bool_),
                               jnp.ones((batch, cache_size - length), jnp.bool_)], axis=1)
  state = DecodeState(init_cache(model, batch, cache_size), valid_BxS, jnp.zeros((), jnp.int32))
  logits_BxPxV, state = _apply(model, params, state, prompt_BxP)
  return logits_BxPxV[:, -1], state


def decode_step(model, params, state, tokens_B):
  """One new token per row; returns (its logits [B, V], state)."""
  logits_Bx1xV, state = _apply(model, params, state, tokens_B[:, None])
  return logits_Bx1xV[:, 0], state


def _arguments(params, prompt_BxP, prompt_valid_BxP, key, max_new_tokens):
  """The jitted generators' array arguments, checked."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  prompt_BxP = jnp.asarray(prompt_BxP, jnp.int32)
  if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, length >= 1] token ids, got shape {prompt_BxP.shape}")
  valid_BxP = (jnp.ones(prompt_BxP.shape, jnp.bool_) if prompt_valid_BxP is None
               else jnp.asarray(prompt_valid_BxP, jnp.bool_))
  return params, prompt_BxP, valid_BxP, jax.random.key(0) if key is None else key


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling"))
def _generate(model, params, prompt_BxP, prompt_valid_BxP, key, *, max_new_tokens, sampling):
  logits_BxV, state = prefill(model, params, prompt_BxP, prompt_valid_BxP,
                              prompt_BxP.shape[1] + max_new_tokens)

  def step(carry, index):
    logits_BxV, state = carry
    token_B = sample_token(jax.random.fold_in(key, index), logits_BxV, sampling)
    next_logits_BxV, state = decode_step(model, params, state, token_B)
    return (next_logits_BxV, state), (token_B, logits_BxV)

  # The last token needs no forward pass after it: sample it outside the scan.
  (logits_BxV, _), (tokens_NxB, logits_NxBxV) = jax.lax.scan(
      step, (logits_BxV, state), jnp.arange(max_new_tokens - 1))
  last_B = sample_token(jax.random.fold_in(key, max_new_tokens - 1), logits_BxV, sampling)
  tokens_BxN = jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)
  logits_BxNxV = jnp.concatenate([logits_NxBxV.transpose(1, 0, 2), logits_BxV[:, None]], axis=1)
  return tokens_BxN, logits_BxNxV


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling"))
def _generate_uncached(model, params, prompt_BxP, prompt_valid_BxP, key, *, max_new_tokens,
                       sampling):
  batch, length = prompt_BxP.shape
  total = length + max_new_tokens
  tokens_BxS = jnp.zeros((batch, total), jnp.int32).at[:, :length].set(prompt_BxP)
  valid_BxS = jnp.concatenate([prompt_valid_BxP, jnp.ones((batch, max_new_tokens), jnp.bool_)], 1)
  positions_BxS = decoder.positions_from_mask(valid_BxS)

  def step(tokens_BxS, index):
    # Slots after the current token hold zeros; the causal mask hides them.
    logits_BxSxV, _ = model.apply({"params": params}, tokens_BxS, padding_mask=valid_BxS,
                                  positions=positions_BxS)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxSxV, length - 1 + index, 1, False)
    token_B = sample_token(jax.random.fold_in(key, index), logits_BxV, sampling)
    tokens_BxS = jax.lax.dynamic_update_index_in_dim(tokens_BxS, token_B, length + index, 1)
    return tokens_BxS, logits_BxV

  tokens_BxS, logits_NxBxV = jax.lax.scan(step, tokens_BxS, jnp.arange(max_new_tokens))
  return tokens_BxS[:, length:], logits_NxBxV.transpose(1, 0, 2)


def generate(model, params, prompt_BxP, *, max_new_tokens, prompt_valid=None,
             sampling=Sampling(), key=None):
  """Cached decoding: (new tokens [B, max_new_tokens], the logits each was drawn
  from [B, max_new_tokens, V]). One jitted function per model, shape and sampling."""
  return _generate(model, *_arguments(params, prompt_BxP, prompt_valid, key, max_new_tokens),
                   max_new_tokens=max_new_tokens, sampling=sampling)


def generate_uncached(model, params, prompt_BxP, *, max_new_tokens, prompt_valid=None,
                      sampling=Sampling(), key=None):
  """`generate` without a cache: every step runs the full forward over the fixed
  [B, P + max_new_tokens] buffer and reads the current position's logits."""
  return _generate_uncached(
      model, *_arguments(params, prompt_BxP, prompt_valid, key, max_new_tokens),
      max_new_tokens=max_new_tokens, sampling=sampling)


def compiled_generator(model, params, prompt_BxP, *, max_new_tokens, prompt_valid=None,
                       sampling=Sampling(), key=None, cached=True):
  """`generate` (or, cached=False, `generate_uncached`) compiled ahead of time for
  these inputs: a function of no arguments, so a benchmark times runs, not compiles."""
  arguments = _arguments(params, prompt_BxP, prompt_valid, key, max_new_tokens)
  jitted = _generate if cached else _generate_uncached
  compiled = jitted.lower(model, *arguments, max_new_tokens=max_new_tokens,
                          sampling=sampling).compile()
  return functools.partial(compiled, *arguments)
