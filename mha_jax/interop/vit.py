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

import numpy as np

from mha_jax.interop import common

GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# timm's published sizes: its config.json names the architecture, not the head count.
TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
              "large": (1024, 24, 16), "huge": (1280, 32, 16)}
# transformers 5 renames ViT modules in memory (`model.state_dict()`); files keep the
# 4.x names that `save_pretrained` still writes, which are the ones converted here.
HF5_RENAMES = ((r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
               (r"\.attention\.([qkv])_proj\.", lambda m: ".attention.attention." +
                {"q": "query", "k": "key", "v": "value"}[m.group(1)] + "."),
               (r"\.attention\.o_proj\.", ".attention.output.dense."),
               (r"\.mlp\.fc1\.", ".intermediate.dense."),
               (r"\.mlp\.fc2\.", ".output.dense."))


def is_timm(state_dict):
  return "cls_token" in state_dict or "blocks.0.attn.qkv.weight" in state_dict


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
  return dict(num_layers=config["num_hidden_layers"], width=config["hidden_size"],
              num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
              mlp=GELU[act], norm_eps=config.get("layer_norm_eps", 1e-12),
              num_classes=len(labels), image_size=config.get("image_size", 224),
              patch_size=config.get("patch_size", 16), pool="token")


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


def import_state_dict(state_dict, num_layers, num_heads, source):
  """HF or timm state dict → ({loop-layout path: array}, {path: key})."""
  if is_timm(state_dict):
    return _import_timm(state_dict, num_layers, num_heads, source)
  for pattern, repl in HF5_RENAMES:
    state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
  r = common.StateDictReader(state_dict, source, (r"^vit\.pooler\.",))
  r.put("cls", "vit.embeddings.cls_token")
  r.put("position_embedding", "vit.embeddings.position_embeddings")
  r.put("embedding/kernel", "vit.embeddings.patch_embeddings.projection.weight", conv_kernel)
  r.put("embedding/bias", "vit.embeddings.patch_embeddings.projection.bias")
  for i in range(num_layers):
    hf, ours = f"vit.encoder.layer.{i}.", f"encoder/layers_{i}/"
    r.put_layer_norm(ours + "attention_norm", hf + "layernorm_before")
    r.put_layer_norm(ours + "mlp_norm", hf + "layernorm_after")
    for name in ("query", "key", "value"):
      r.put(ours + f"attention/{name}/kernel", hf + f"attention.attention.{name}.weight",
            lambda w: common.split_heads_in(common.linear_to_kernel(w), num_heads))
      r.put(ours + f"attention/{name}/bias", hf + f"attention.attention.{name}.bias",
            lambda b: b.reshape(num_heads, -1))
    r.put(ours + "attention/out/kernel", hf + "attention.output.dense.weight",
          lambda w: common.split_heads_out(common.linear_to_kernel(w), num_heads))
    r.put(ours + "attention/out/bias", hf + "attention.output.dense.bias")
    r.put(ours + "mlp/fc1/kernel", hf + "intermediate.dense.weight", common.linear_to_kernel)
    r.put(ours + "mlp/fc1/bias", hf + "intermediate.dense.bias")
    r.put(ours + "mlp/fc2/kernel", hf + "output.dense.weight", common.linear_to_kernel)
    r.put(ours + "mlp/fc2/bias", hf + "output.dense.bias")
  r.put_layer_norm("encoder_norm", "vit.layernorm")
  r.put("head/kernel", "classifier.weight", common.linear_to_kernel)
  r.put("head/bias", "classifier.bias")
  return r.finish()


def _import_timm(state_dict, num_layers, num_heads, source):
  r = common.StateDictReader(state_dict, source)
  r.put("cls", "cls_token")
  r.put("position_embedding", "pos_embed")
  r.put("embedding/kernel", "patch_embed.proj.weight", conv_kernel)
  r.put("embedding/bias", "patch_embed.proj.bias")
  for i in range(num_layers):
    tm, ours = f"blocks.{i}.", f"encoder/layers_{i}/"
    r.put_layer_norm(ours + "attention_norm", tm + "norm1")
    r.put_layer_norm(ours + "mlp_norm", tm + "norm2")
    qkv = [ours + f"attention/{n}" for n in ("query", "key", "value")]
    r.put_many([p + "/kernel" for p in qkv], tm + "attn.qkv.weight",
               lambda w: [common.split_heads_in(common.linear_to_kernel(part), num_heads)
                          for part in np.split(w, 3, axis=0)])
    r.put_many([p + "/bias" for p in qkv], tm + "attn.qkv.bias",
               lambda b: [part.reshape(num_heads, -1) for part in np.split(b, 3)])
    r.put(ours + "attention/out/kernel", tm + "attn.proj.weight",
          lambda w: common.split_heads_out(common.linear_to_kernel(w), num_heads))
    r.put(ours + "attention/out/bias", tm + "attn.proj.bias")
    for fc in ("fc1", "fc2"):
      r.put(ours + f"mlp/{fc}/kernel", tm + f"mlp.{fc}.weight", common.linear_to_kernel)
      r.put(ours + f"mlp/{fc}/bias", tm + f"mlp.{fc}.bias")
  r.put_layer_norm("encoder_norm", "norm")
  r.put("head/kernel", "head.weight", common.linear_to_kernel)
  r.put("head/bias", "head.bias")
  return r.finish()


def conv_kernel(w_DxCxPxP):
  """torch Conv2d weight [out, in, kh, kw] → Flax Conv kernel [kh, kw, in, out]."""
  return np.ascontiguousarray(w_DxCxPxP.transpose(2, 3, 1, 0))


def torch_conv_weight(kernel_PxPxCxD):
  return np.ascontiguousarray(kernel_PxPxCxD.transpose(3, 2, 0, 1))


def _layer_tensors(flat, ours):
  """The per-layer tensors in PyTorch orientation: (name, array) pairs."""
  get = lambda name: flat[ours + name]  # noqa: E731
  return {
      "q_w": common.merge_in(get("attention/query/kernel")).T,
      "k_w": common.merge_in(get("attention/key/kernel")).T,
      "v_w": common.merge_in(get("attention/value/kernel")).T,
      "q_b": get("attention/query/bias").reshape(-1),
      "k_b": get("attention/key/bias").reshape(-1),
      "v_b": get("attention/value/bias").reshape(-1),
      "o_w": common.merge_out(get("attention/out/kernel")).T, "o_b": get("attention/out/bias"),
      "n1_w": get("attention_norm/scale"), "n1_b": get("attention_norm/bias"),
      "n2_w": get("mlp_norm/scale"), "n2_b": get("mlp_norm/bias"),
      "fc1_w": get("mlp/fc1/kernel").T, "fc1_b": get("mlp/fc1/bias"),
      "fc2_w": get("mlp/fc2/kernel").T, "fc2_b": get("mlp/fc2/bias"),
  }


def export_state_dict(flat, num_layers, timm=False):
  """{loop-layout path: array} → HF (default) or timm state dict."""
  glob = {"cls": flat["cls"], "pos": flat["position_embedding"],
          "patch_w": torch_conv_weight(flat["embedding/kernel"]), "patch_b": flat["embedding/bias"],
          "norm_w": flat["encoder_norm/scale"], "norm_b": flat["encoder_norm/bias"],
          "head_w": flat["head/kernel"].T, "head_b": flat["head/bias"]}
  if timm:
    sd = {"cls_token": glob["cls"], "pos_embed": glob["pos"],
          "patch_embed.proj.weight": glob["patch_w"], "patch_embed.proj.bias": glob["patch_b"],
          "norm.weight": glob["norm_w"], "norm.bias": glob["norm_b"],
          "head.weight": glob["head_w"], "head.bias": glob["head_b"]}
  else:
    sd = {"vit.embeddings.cls_token": glob["cls"],
          "vit.embeddings.position_embeddings": glob["pos"],
          "vit.embeddings.patch_embeddings.projection.weight": glob["patch_w"],
          "vit.embeddings.patch_embeddings.projection.bias": glob["patch_b"],
          "vit.layernorm.weight": glob["norm_w"], "vit.layernorm.bias": glob["norm_b"],
          "classifier.weight": glob["head_w"], "classifier.bias": glob["head_b"]}
  for i in range(num_layers):
    t = _layer_tensors(flat, f"encoder/layers_{i}/")
    if timm:
      p = f"blocks.{i}."
      sd.update({p + "norm1.weight": t["n1_w"], p + "norm1.bias": t["n1_b"],
                 p + "attn.qkv.weight": np.concatenate([t["q_w"], t["k_w"], t["v_w"]]),
                 p + "attn.qkv.bias": np.concatenate([t["q_b"], t["k_b"], t["v_b"]]),
                 p + "attn.proj.weight": t["o_w"], p + "attn.proj.bias": t["o_b"],
                 p + "norm2.weight": t["n2_w"], p + "norm2.bias": t["n2_b"],
                 p + "mlp.fc1.weight": t["fc1_w"], p + "mlp.fc1.bias": t["fc1_b"],
                 p + "mlp.fc2.weight": t["fc2_w"], p + "mlp.fc2.bias": t["fc2_b"]})
    else:
      p = f"vit.encoder.layer.{i}."
      for name in ("query", "key", "value"):
        sd[p + f"attention.attention.{name}.weight"] = t[f"{name[0]}_w"]
        sd[p + f"attention.attention.{name}.bias"] = t[f"{name[0]}_b"]
      sd.update({p + "attention.output.dense.weight": t["o_w"],
                 p + "attention.output.dense.bias": t["o_b"],
                 p + "layernorm_before.weight": t["n1_w"], p + "layernorm_before.bias": t["n1_b"],
                 p + "layernorm_after.weight": t["n2_w"], p + "layernorm_after.bias": t["n2_b"],
                 p + "intermediate.dense.weight": t["fc1_w"],
                 p + "intermediate.dense.bias": t["fc1_b"],
                 p + "output.dense.weight": t["fc2_w"], p + "output.dense.bias": t["fc2_b"]})
  return sd


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
              num_hidden_layers=cfg.num_layers, hidden_size=cfg.width,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
              hidden_act="gelu" if cfg.mlp == "gelu" else "gelu_pytorch_tanh",
              layer_norm_eps=cfg.norm_eps, image_size=model.image_size,
              patch_size=model.patch_size, num_channels=num_channels, qkv_bias=True,
              id2label={str(i): f"LABEL_{i}" for i in range(model.num_classes)},
              label2id={f"LABEL_{i}": i for i in range(model.num_classes)})
