"""What a decoder-only stack (GPT-2, LLaMA) and cached decoding share: the causal
mask, positions from a padding mask, and the inputs of a full or a cached call."""

from __future__ import annotations

import jax.numpy as jnp

from mha_jax import attention


def check_length(length, max_len):
  if length > max_len:
    raise ValueError(f"sequence length {length} exceeds the position table max_len={max_len}")


def decoder_mask(length, padding_mask_BxT=None):
  """Causal mask [1|B, 1, T, T], and'ed with a [B, T] key padding mask if given."""
  mask = attention.causal_mask(length)
  if padding_mask_BxT is not None:
    mask = mask & attention.padding_mask(padding_mask_BxT)
  return mask


def positions_from_mask(valid_BxS):
  """Position of each slot = real tokens before it, so a left-padded prompt gets the
  positions it has alone (Hugging Face's convention); padding slots get 0."""
  return jnp.maximum(jnp.cumsum(valid_BxS.astype(jnp.int32), axis=1) - 1, 0)


def decoder_inputs(length, max_len, padding_mask, positions, decode):
  """(mask, positions, key positions) for the decoder stack of GPT and LLaMA.

  Without `decode`: padding_mask [B, T] over the tokens, positions [B|1, T] or
  None (0 … T−1). With `decode` (see mha_jax.decode): padding_mask [B, S] over the
  K/V cache slots and positions [B, T] of the new tokens, both required; the
  slots' positions follow the padding mask (`positions_from_mask`).
  """
  if not decode:
    check_length(length, max_len)
    return decoder_mask(length, padding_mask), positions, None
  if padding_mask is None or positions is None:
    raise ValueError("decode=True needs padding_mask over the cache slots [B, S] and the new "
                     "tokens' positions [B, T]")
  check_length(padding_mask.shape[1], max_len)
  return attention.padding_mask(padding_mask), positions, positions_from_mask(padding_mask)
