"""GPT-2 (Radford et al.) with optional Modern Hopfield Attention."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mha_jax.models import decoder, layers
from mha_jax.models.stack_config import StackConfig, build_stack_config, select_variant

VARIANTS = {
    "small": dict(num_layers=12, width=768, num_heads=12, mlp_dim=3072),
    "medium": dict(num_layers=24, width=1024, num_heads=16, mlp_dim=4096),
    "large": dict(num_layers=36, width=1280, num_heads=20, mlp_dim=5120),
    "xl": dict(num_layers=48, width=1600, num_heads=25, mlp_dim=6400),
}
STACK_DEFAULTS = dict(norm="layernorm", norm_eps=1e-5, mlp="gelu_tanh", use_bias=True,
                      init_std=0.02, scale_residual_init=True, causal=True)


class GPT(nn.Module):
  """tokens [B, T] int → (logits [B, T, vocab] float32, per-layer outputs).

  `positions`, `decode`: see `decoder_inputs` (decode needs mutable=["cache"]).
  """
  stack: StackConfig
  vocab_size: int = 50257
  max_len: int = 1024

  @nn.compact
  def __call__(self, tokens_BxT, *, train=False, padding_mask=None, return_intermediates=False,
               positions=None, decode=False):
    cfg = self.stack
    length = tokens_BxT.shape[1]
    mask, positions, key_positions = decoder.decoder_inputs(length, self.max_len, padding_mask,
                                                    positions, decode)
    embed = nn.Embed(self.vocab_size, cfg.width, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                 ("vocab", "embed")),
                     name="token_embedding")
    pos = self.param("position_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  ("length", "embed")),
                     (self.max_len, cfg.width), cfg.param_dtype)
    pos_TxD = pos[:length] if positions is None else jnp.take(pos, positions, axis=0)
    x_BxTxD = embed(tokens_BxT) + pos_TxD.astype(cfg.dtype)
    x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)
    x_BxTxD, outputs = layers.LayerStack(cfg, name="decoder")(
        x_BxTxD, mask, deterministic=not train, return_intermediates=return_intermediates,
        positions=positions, key_positions=key_positions, decode=decode)
    x_BxTxD = layers.make_norm(cfg, "final_norm")(x_BxTxD)
    logits_BxTxV = embed.attend(x_BxTxD)  # tied input/output embedding
    return logits_BxTxV.astype(jnp.float32), outputs or {}


def create(variant="small", **overrides) -> GPT:
  stack_defaults = {**select_variant("GPT-2", VARIANTS, variant), **STACK_DEFAULTS}
  stack, model_kw = build_stack_config(stack_defaults, overrides,
                                              {"vocab_size", "max_len"})
  return GPT(stack=stack, **model_kw)
