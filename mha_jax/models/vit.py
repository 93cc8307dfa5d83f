"""Vision Transformer (Dosovitskiy et al.) with optional Modern Hopfield Attention."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mha_jax.models import layers
from mha_jax.models.stack_config import StackConfig, build_stack_config, check_choice, select_variant

# width, depth, MLP width, heads: the published ViT sizes.
VARIANTS = {
    "Ti": dict(width=192, num_layers=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, num_layers=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, num_layers=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, num_layers=24, mlp_dim=4096, num_heads=16),
}
STACK_DEFAULTS = dict(norm="layernorm", norm_eps=1e-6, mlp="gelu", use_bias=True,
                      init_std=None)
POOLS = ("token", "gap")


class ViT(nn.Module):
  """images [B, H, W, C] → (logits [B, classes], per-layer outputs)."""
  stack: StackConfig
  num_classes: int = 1000
  image_size: int = 224
  patch_size: int = 16
  pool: str = "token"   # class token, or global average of the patch tokens

  def __post_init__(self):
    check_choice("pool", self.pool, POOLS)
    if self.image_size % self.patch_size:
      raise ValueError(f"patch_size={self.patch_size} does not divide image_size={self.image_size}")
    super().__post_init__()

  @nn.compact
  def __call__(self, images_BxHxWxC, *, train=False, return_intermediates=False):
    cfg = self.stack
    if images_BxHxWxC.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"images of size {images_BxHxWxC.shape[1:3]} given to a ViT built "
                       f"for image_size={self.image_size}")
    x = nn.Conv(cfg.width, (self.patch_size, self.patch_size), strides=self.patch_size,
                padding="VALID", dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=layers.kernel_init(cfg, (None, None, None, "embed")),
                name="embedding")(images_BxHxWxC.astype(cfg.dtype))
    x_BxTxD = x.reshape(x.shape[0], -1, cfg.width)
    if self.pool == "token":
      cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           (None, None, "embed")),
                       (1, 1, cfg.width), cfg.param_dtype)
      cls_Bx1xD = jnp.broadcast_to(cls, (x_BxTxD.shape[0], 1, cfg.width)).astype(cfg.dtype)
      x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxTxD], axis=1)
    pos = self.param("position_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  (None, "length", "embed")),
                     (1, x_BxTxD.shape[1], cfg.width), cfg.param_dtype)
    x_BxTxD = x_BxTxD + pos.astype(cfg.dtype)
    x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)

    x_BxTxD, outputs = layers.LayerStack(cfg, name="encoder")(
        x_BxTxD, deterministic=not train, return_intermediates=return_intermediates)
    x_BxTxD = layers.make_norm(cfg, "encoder_norm")(x_BxTxD)
    pooled_BxD = x_BxTxD[:, 0] if self.pool == "token" else x_BxTxD.mean(axis=1)
    logits = nn.Dense(self.num_classes, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("embed", "classes")),
                      name="head")(pooled_BxD)
    return logits.astype(jnp.float32), outputs or {}


def create(variant="B/16", **overrides) -> ViT:
  """ViT from a big_vision-style variant name "<size>/<patch>", e.g. "Ti/4" or "B/16"."""
  size, _, patch = variant.partition("/")
  stack_defaults = {**select_variant("ViT", VARIANTS, size), **STACK_DEFAULTS}
  model_fields = {"num_classes", "image_size", "patch_size", "pool"}
  stack, model_kw = build_stack_config(stack_defaults, overrides, model_fields)
  if patch:
    model_kw.setdefault("patch_size", int(patch))
  return ViT(stack=stack, **model_kw)
