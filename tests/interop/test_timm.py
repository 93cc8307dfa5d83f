"""timm `vit_*` naming, from a state-dict fixture (timm itself is not installed: its
wheel pulls a CUDA torch). The fixture is an HF ViT's weights renamed the way timm
names them, with Q, K, V fused as timm's `attn.qkv` (rows [q; k; v]); the reference
logits are that HF ViT's, with timm's LayerNorm eps 1e-6."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mha_jax import interop
from mha_jax.interop import checkpoint_io, vit

DEPTH, WIDTH, HEADS, MLP, IMAGE, PATCH, CLASSES = 2, 36, 3, 54, 20, 5, 7


def timm_state_dict(hf):
  sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
  out = {"cls_token": sd["vit.embeddings.cls_token"],
         "pos_embed": sd["vit.embeddings.position_embeddings"],
         "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
         "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
  for i in range(DEPTH):
    hf_layer, tm = f"vit.layers.{i}.", f"blocks.{i}."
    for kind in ("weight", "bias"):
      out[tm + f"attn.qkv.{kind}"] = torch.cat(
          [sd[hf_layer + f"attention.{p}_proj.{kind}"] for p in "qkv"])
      out[tm + f"attn.proj.{kind}"] = sd[hf_layer + f"attention.o_proj.{kind}"]
      out[tm + f"norm1.{kind}"] = sd[hf_layer + f"layernorm_before.{kind}"]
      out[tm + f"norm2.{kind}"] = sd[hf_layer + f"layernorm_after.{kind}"]
      out[tm + f"mlp.fc1.{kind}"] = sd[hf_layer + f"mlp.fc1.{kind}"]
      out[tm + f"mlp.fc2.{kind}"] = sd[hf_layer + f"mlp.fc2.{kind}"]
  return out


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
  config = transformers.ViTConfig(num_hidden_layers=DEPTH, hidden_size=WIDTH,
                                  num_attention_heads=HEADS, intermediate_size=MLP,
                                  image_size=IMAGE, patch_size=PATCH, num_labels=CLASSES,
                                  layer_norm_eps=1e-6, attn_implementation="eager")
  torch.manual_seed(4)
  hf = transformers.ViTForImageClassification(config).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  directory = str(tmp_path_factory.mktemp("timm"))
  state_dict = timm_state_dict(hf)
  # The timm hub layout: config.json naming the architecture, and the weights.
  hub_config = {"architecture": f"vit_custom_patch{PATCH}_{IMAGE}", "num_classes": CLASSES,
                "model_args": {"embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS,
                               "mlp_ratio": MLP / WIDTH, "patch_size": PATCH, "img_size": IMAGE}}
  checkpoint_io.write_checkpoint(directory, hub_config,
                                 {k: v.numpy() for k, v in state_dict.items()})
  # And a bare training checkpoint: a .pth holding {"state_dict": ...}, no config.
  bare = str(tmp_path_factory.mktemp("timm_bare") / "vit.pth")
  torch.save({"state_dict": state_dict, "epoch": 3}, bare)
  return hf, directory, bare, state_dict


def logits_pair(hf, model, params):
  x = np.random.RandomState(0).randn(2, 3, IMAGE, IMAGE).astype(np.float32)
  ours, _ = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  with torch.no_grad():
    theirs = hf(torch.as_tensor(x)).logits.numpy()
  return np.asarray(ours), theirs


def test_timm_logits(timm_checkpoint):
  hf, directory, _, _ = timm_checkpoint
  name, options = interop.model_options_from_pretrained(directory)
  assert name == "vit" and options["num_heads"] == HEADS and options["mlp_dim"] == MLP
  model = interop.model_from_pretrained(directory)
  ours, theirs = logits_pair(hf, model, interop.load_pretrained(directory, model))
  assert np.abs(ours - theirs).max() <= 1e-4


def test_timm_bare_pth_file(timm_checkpoint):
  hf, directory, bare, _ = timm_checkpoint
  model = interop.model_from_pretrained(directory, scan_layers=False)
  ours, theirs = logits_pair(hf, model, interop.load_pretrained(bare, model))
  assert np.abs(ours - theirs).max() <= 1e-4


def test_timm_export_round_trip(timm_checkpoint, tmp_path):
  _, directory, _, state_dict = timm_checkpoint
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  out = interop.export_pretrained(params, model, str(tmp_path), timm=True)
  config, exported = checkpoint_io.read_checkpoint(out)
  assert sorted(exported) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
  assert config["model_args"]["num_heads"] == HEADS
  same = interop.model_options_from_pretrained(directory)
  assert interop.model_options_from_pretrained(out) == same


def test_timm_layer_scale_is_reported_not_dropped(timm_checkpoint, tmp_path):
  _, directory, _, state_dict = timm_checkpoint
  with_ls = {k: v.numpy() for k, v in state_dict.items()}
  with_ls["blocks.0.ls1.gamma"] = np.ones(WIDTH, np.float32)
  with open(os.path.join(directory, "config.json")) as f:
    checkpoint_io.write_checkpoint(str(tmp_path), json.load(f), with_ls)
  model = interop.model_from_pretrained(directory)
  with pytest.raises(ValueError, match=r"unexpected key 'blocks\.0\.ls1\.gamma' of shape \(36,\)"):
    interop.load_pretrained(str(tmp_path), model)


def test_timm_options_from_architecture_name():
  """A timm hub config without model_args: sizes from timm's published table."""
  options = vit.timm_model_options({"architecture": "vit_small_patch16_384.augreg_in21k",
                                    "num_classes": 21843})
  assert (options["width"], options["num_layers"], options["num_heads"], options["mlp_dim"],
          options["patch_size"], options["image_size"]) == (384, 12, 6, 1536, 16, 384)
  with pytest.raises(ValueError, match="give model_args"):
    vit.timm_model_options({"architecture": "vit_base_patch16_clip_224"})
