"""LLaMA-style decoder (RMSNorm, rotary embeddings, SwiGLU, untied head) with optional MHA.

The paper gives no LLaMA sizes. The presets are the from-scratch LLaMA sizes that
the efficient-pretraining literature (ReLoRA, GaLore) trains on C4 with a 32k
vocabulary: they span 60M–1B, so the scale question (spec §6) is a config change.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mha_jax.models import decoder, layers
from mha_jax.models.stack_config import StackConfig, build_stack_config, select_variant

VARIANTS = {
    "60m": dict(num_layers=8, width=512, num_heads=8, mlp_dim=1376),
    "130m": dict(num_layers=12, width=768, num_heads=12, mlp_dim=2048),
    "350m": dict(num_layers=24, width=1024, num_heads=16, mlp_dim=2736),
    "1b": dict(num_layers=24, width=2048, num_heads=32, mlp_dim=5461),
}
STACK_DEFAULTS = dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", use_bias=False,
                      rope_theta=10000.0, init_std=0.02, causal=True)


class Llama(nn.Module):
  """tokens [B, T] int → (logits [B, T, vocab] float32, per-layer outputs).

  `positions`, `decode`: see `decoder.decoder_inputs` (decode needs mutable=["cache"]).
  """
  stack: StackConfig
  vocab_size: int = 32000
  max_len: int = 2048   # longest context the model is meant for (rotary has no table)

  @nn.compact
  def __call__(self, tokens_BxT, *, train=False, padding_mask=None, return_intermediates=False,
               positions=None, decode=False):
    cfg = self.stack
    mask, positions, key_positions = decoder.decoder_inputs(
        tokens_BxT.shape[1], self.max_len, padding_mask, positions, decode)
    x_BxTxD = nn.Embed(self.vocab_size, cfg.width, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                   ("vocab", "embed")),
                       name="token_embedding")(tokens_BxT)
    x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)
    x_BxTxD, outputs = layers.LayerStack(cfg, name="decoder")(
        x_BxTxD, mask, deterministic=not train, return_intermediates=return_intermediates,
        positions=positions, key_positions=key_positions, decode=decode)
    x_BxTxD = layers.make_norm(cfg, "final_norm")(x_BxTxD)
    logits_BxTxV = nn.Dense(self.vocab_size, use_bias=False, dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype,
                            kernel_init=layers.kernel_init(cfg, ("embed", "vocab")),
                            name="lm_head")(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32), outputs or {}


def create(variant="60m", **overrides) -> Llama:
  stack_defaults = {**select_variant("LLaMA", VARIANTS, variant), **STACK_DEFAULTS}
  stack, model_kw = build_stack_config(stack_defaults, overrides,
                                              {"vocab_size", "max_len"})
  return Llama(stack=stack, **model_kw)
