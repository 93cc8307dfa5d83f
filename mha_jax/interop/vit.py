"""Hugging Face `ViTForImageClassification` and timm `vit_*` ↔ mha_jax "vit".

Both store the patch embedding as a Conv2d weight [D, C, p, p] (Flax: [p, p, C, D])
and flatten patches row-major, as mha_jax does, so the position table carries over.
HF keeps Q, K, V separate; timm fuses them in `attn.qkv` (rows [q; k; v], each
heads·head_dim, the order its forward reshapes to (3, heads, head_dim)).
Only class-token models with a LayerNorm before the head convert (no timm
`fc_norm`, layer scale or register tokens: those keys are reported, not dropped).
"""

from __future__ import annotations

import re

from mha_jax.interop import common
from mha_jax.interop.common import (CONV, GELU, HEADS_BIAS, LINEAR, LINEAR_HEADS_IN,
                                    LINEAR_HEADS_OUT, Row, Table, dense, linear_block, norm)

# timm's published sizes: its config.json names the architecture, not the head count.
TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
              "large": (1024, 24, 16), "huge": (1280, 32, 16)}
# transformers 5 renames ViT modules in memory (`model.state_dict()`); files keep the
# 4.x names that `save_pretrained` still writes, which are the table's.
HF5_RENAMES = ((r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
               (r"\.attention\.([qkv])_proj\.", lambda m: ".attention.attention." +
                {"q": "query", "k": "key", "v": "value"}[m.group(1)] + "."),
               (r"\.attention\.o_proj\.", ".attention.output.dense."),
               (r"\.mlp\.fc1\.", ".intermediate.dense."),
               (r"\.mlp\.fc2\.", ".output.dense."))
BLOCK_NAMES = {"attention_norm": "layernorm_before", "query": "attention.attention.query",
               "key": "attention.attention.key", "value": "attention.attention.value",
               "out": "attention.output.dense", "mlp_norm": "layernorm_after",
               "fc1": "intermediate.dense", "fc2": "output.dense"}
OURS = "encoder/layers_{i}/"


def _hf4_names(state_dict):
  for pattern, repl in HF5_RENAMES:
    state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
  return state_dict


TABLE = Table(
    rows=(Row("cls", "vit.embeddings.cls_token"),
          Row("position_embedding", "vit.embeddings.position_embeddings"),
          *dense("embedding", "vit.embeddings.patch_embeddings.projection", CONV),
          *linear_block(OURS, "vit.encoder.layer.{i}.", BLOCK_NAMES),
          *norm("encoder_norm", "vit.layernorm"),
          *dense("head", "classifier", LINEAR)),
    ignore=(r"^vit\.pooler\.",),
    prepare=_hf4_names)

TIMM_TABLE = Table(rows=(
    Row("cls", "cls_token"),
    Row("position_embedding", "pos_embed"),
    *dense("embedding", "patch_embed.proj", CONV),
    *norm(OURS + "attention_norm", "blocks.{i}.norm1"),
    *dense(tuple(f"{OURS}attention/{n}" for n in ("query", "key", "value")), "blocks.{i}.attn.qkv",
           LINEAR_HEADS_IN, HEADS_BIAS),
    *dense(OURS + "attention/out", "blocks.{i}.attn.proj", LINEAR_HEADS_OUT),
    *norm(OURS + "mlp_norm", "blocks.{i}.norm2"),
    *dense(OURS + "mlp/fc1", "blocks.{i}.mlp.fc1", LINEAR),
    *dense(OURS + "mlp/fc2", "blocks.{i}.mlp.fc2", LINEAR),
    *norm("encoder_norm", "norm"),
    *dense("head", "head", LINEAR)))


def is_timm(state_dict):
  return "cls_token" in state_dict or "blocks.0.attn.qkv.weight" in state_dict


# HF config.json ↔ mha_jax options, both directions (labels and activation apart).
CONFIG_FIELDS = (
    common.ConfigField("num_hidden_layers", "num_layers", common.REQUIRED),
    common.ConfigField("hidden_size", "width", common.REQUIRED),
    common.ConfigField("num_attention_heads", "num_heads", common.REQUIRED),
    common.ConfigField("intermediate_size", "mlp_dim", common.REQUIRED),
    common.ConfigField("layer_norm_eps", "norm_eps", 1e-12),
    common.ConfigField("image_size", "image_size", 224),
    common.ConfigField("patch_size", "patch_size", 16),
)


def model_options(config):
  """mha_jax ViT options from an HF ViT config.json or a timm one."""
  if "architecture" in config:
    return timm_model_options(config)
  act = config.get("hidden_act", "gelu")
  if act not in GELU:
    raise ValueError(f"ViT hidden_act={act!r}; supported: {sorted(GELU)}")
  if not config.get("qkv_bias", True):
    raise ValueError("ViT configs with qkv_bias=False are not supported")
  labels = config.get("id2label") or {str(i): i for i in range(config.get("num_labels", 2))}
  return dict(common.import_config_fields(CONFIG_FIELDS, config), mlp=GELU[act],
              num_classes=len(labels), pool="token")


def timm_model_options(config):
  """From `model_args` when the config has them (our export writes them), else from
  a vit_<size>_patch<p>_<img> architecture name."""
  args = config.get("model_args") or {}
  name = config["architecture"]
  match = re.fullmatch(r"vit_(\w+?)_patch(\d+)_(\d+)(?:\.\w+)?", name)
  size = TIMM_SIZES.get(match.group(1)) if match else None
  if size is None and not args:
    raise ValueError(f"timm architecture {name!r}: give model_args or use a "
                     f"vit_<size>_patch<p>_<img> name")
  width, depth, heads = size or (None, None, None)
  width = args.get("embed_dim", width)
  return dict(num_layers=args.get("depth", depth), width=width,
              num_heads=args.get("num_heads", heads),
              mlp_dim=round(width * args.get("mlp_ratio", 4.0)), mlp="gelu", norm_eps=1e-6,
              num_classes=config.get("num_classes", 1000),
              image_size=args.get("img_size", int(match.group(3)) if match else 224),
              patch_size=args.get("patch_size", int(match.group(2)) if match else 16),
              pool="token")


def export_config(model, num_channels=3, timm=False):
  """config.json for `ViTForImageClassification.from_pretrained`, or a timm hub config."""
  cfg = model.stack
  if cfg.norm != "layernorm" or cfg.mlp not in ("gelu", "gelu_tanh") or model.pool != "token":
    raise ValueError("only a class-token ViT with layernorm and a GELU MLP exports")
  if timm:
    if cfg.mlp != "gelu" or cfg.norm_eps != 1e-6:
      raise ValueError("timm's ViT has exact GELU and LayerNorm eps 1e-6")
    args = dict(embed_dim=cfg.width, depth=cfg.num_layers, num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_dim / cfg.width, patch_size=model.patch_size,
                img_size=model.image_size, in_chans=num_channels)
    return dict(architecture=f"vit_custom_patch{model.patch_size}_{model.image_size}",
                num_classes=model.num_classes, num_features=cfg.width, global_pool="token",
                model_args=args)
  return dict(model_type="vit", architectures=["ViTForImageClassification"],
              **common.export_config_fields(CONFIG_FIELDS, model),
              hidden_act="gelu" if cfg.mlp == "gelu" else "gelu_pytorch_tanh",
              num_channels=num_channels, qkv_bias=True,
              id2label={str(i): f"LABEL_{i}" for i in range(model.num_classes)},
              label2id={f"LABEL_{i}": i for i in range(model.num_classes)})
