"""Whole models around the PyTorch reference stack, loaded from Hugging Face models,
so MHA can run in PyTorch on pretrained weights (experiments/compare_pytorch.py).

Each `from_hf` copies an HF model's weights; `to_jax` maps this module's named
tensors (parameters or their gradients) onto mha_jax's loop-layout tree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mha_jax.interop import torch_reference
from mha_jax.interop.torch_reference import Attention


def _load_stack(model, sd, layer_prefix, names):
  """Copy per-layer HF tensors into model.stack; names: ours → (HF suffix, transpose?)."""
  ours = {}
  for i in range(len(model.stack.layers)):
    for mine, (theirs, transpose) in names.items():
      w = sd[f"{layer_prefix}{i}.{theirs}"]
      ours[f"stack.layers.{i}.{mine}"] = w.T if transpose else w
  return ours


class GPT2(nn.Module):
  """GPT-2 with the reference stack and a tied head."""

  def __init__(self, num_layers, width, num_heads, mlp_dim, vocab_size, max_len,
               attention=Attention(), norm_eps=1e-5):
    super().__init__()
    self.num_heads = num_heads
    self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(max_len, width)
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp="gelu_tanh", norm_eps=norm_eps)
    self.ln_f = nn.LayerNorm(width, eps=norm_eps)

  def forward(self, tokens_BxT):
    x = self.wte(tokens_BxT) + self.wpe(torch.arange(tokens_BxT.shape[1]))
    return self.ln_f(self.stack(x, causal=True)[0]) @ self.wte.weight.T

  @classmethod
  def from_hf(cls, hf_model, attention=Attention()):
    """From a `GPT2LMHeadModel` (Conv1D weights [in, out] → Linear [out, in])."""
    c = hf_model.config
    model = cls(c.n_layer, c.n_embd, c.n_head, c.n_inner or 4 * c.n_embd, c.vocab_size,
                c.n_positions, attention, c.layer_norm_epsilon)
    sd = dict(hf_model.transformer.state_dict())
    for i in range(c.n_layer):  # unfuse c_attn so the generic copy below sees q, k, v
      for kind in ("weight", "bias"):
        parts = sd[f"h.{i}.attn.c_attn.{kind}"].chunk(3, dim=-1)
        for name, part in zip(("query", "key", "value"), parts):
          sd[f"h.{i}.attn.{name}.{kind}"] = part
    norms = ("attention_norm", "mlp_norm")
    names = {f"{mine}.{kind}": (f"{theirs}.{kind}", kind == "weight" and mine not in norms)
             for mine, theirs in (("query", "attn.query"), ("key", "attn.key"),
                                  ("value", "attn.value"), ("out", "attn.c_proj"),
                                  ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj"),
                                  ("attention_norm", "ln_1"), ("mlp_norm", "ln_2"))
             for kind in ("weight", "bias")}
    ours = _load_stack(model, sd, "h.", names)
    ours.update({"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"],
                 "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]})
    model.load_state_dict({k: v.contiguous() for k, v in ours.items()})
    return model.eval()

  def to_jax(self, tensors):
    """Named tensors of this module (params or grads) → mha_jax GPT loop-layout tree."""
    tensors = {k: v.detach().numpy() for k, v in tensors.items()}
    return {"token_embedding": {"embedding": tensors["wte.weight"]},
            "position_embedding": tensors["wpe.weight"],
            "final_norm": {"scale": tensors["ln_f.weight"], "bias": tensors["ln_f.bias"]},
            "decoder": _stack_to_jax(tensors, self.num_heads)}


class ViT(nn.Module):
  """Class-token ViT with the reference stack."""

  def __init__(self, num_layers, width, num_heads, mlp_dim, num_classes, image_size,
               patch_size, channels=3, attention=Attention(), mlp="gelu", norm_eps=1e-6):
    super().__init__()
    self.num_heads = num_heads
    self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.pos = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp=mlp, norm_eps=norm_eps)
    self.norm = nn.LayerNorm(width, eps=norm_eps)
    self.head = nn.Linear(width, num_classes)

  def forward(self, images_BxCxHxW):
    x = self.patch(images_BxCxHxW).flatten(2).transpose(1, 2)  # row-major patches
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
    return self.head(self.norm(self.stack(x)[0])[:, 0])

  @classmethod
  def from_hf(cls, hf_model, attention=Attention()):
    """From a `ViTForImageClassification` (transformers 5 in-memory names)."""
    c = hf_model.config
    model = cls(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size,
                c.num_labels, c.image_size, c.patch_size, c.num_channels, attention,
                "gelu" if c.hidden_act == "gelu" else "gelu_tanh", c.layer_norm_eps)
    sd = dict(hf_model.state_dict())
    names = {f"{mine}.{kind}": (f"{theirs}.{kind}", False)
             for mine, theirs in (("query", "attention.q_proj"), ("key", "attention.k_proj"),
                                  ("value", "attention.v_proj"), ("out", "attention.o_proj"),
                                  ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2"),
                                  ("attention_norm", "layernorm_before"),
                                  ("mlp_norm", "layernorm_after"))
             for kind in ("weight", "bias")}
    ours = _load_stack(model, sd, "vit.layers.", names)
    emb = "vit.embeddings."
    ours.update({"patch.weight": sd[emb + "patch_embeddings.projection.weight"],
                 "patch.bias": sd[emb + "patch_embeddings.projection.bias"],
                 "cls": sd[emb + "cls_token"], "pos": sd[emb + "position_embeddings"],
                 "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
                 "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]})
    model.load_state_dict({k: v.contiguous() for k, v in ours.items()})
    return model.eval()

  def to_jax(self, tensors):
    """Named tensors of this module (params or grads) → mha_jax ViT loop-layout tree."""
    t = {k: v.detach().numpy() for k, v in tensors.items()}
    return {"embedding": {"kernel": t["patch.weight"].transpose(2, 3, 1, 0),
                          "bias": t["patch.bias"]},
            "cls": t["cls"], "position_embedding": t["pos"],
            "encoder_norm": {"scale": t["norm.weight"], "bias": t["norm.bias"]},
            "head": {"kernel": t["head.weight"].T, "bias": t["head.bias"]},
            "encoder": _stack_to_jax(t, self.num_heads)}


class Llama(nn.Module):
  """LLaMA with the reference stack: RMSNorm, SwiGLU, rotary, no biases, untied head."""

  def __init__(self, num_layers, width, num_heads, mlp_dim, vocab_size, attention=Attention(),
               norm_eps=1e-6, rope_theta=10000.0):
    super().__init__()
    self.num_heads = num_heads
    self.embed = nn.Embedding(vocab_size, width)
    self.stack = torch_reference.Stack(num_layers, width, num_heads, mlp_dim, attention,
                                       mlp="swiglu", norm_eps=norm_eps, norm="rmsnorm",
                                       bias=False, rope_theta=rope_theta)
    self.norm = nn.RMSNorm(width, eps=norm_eps)
    self.lm_head = nn.Linear(width, vocab_size, bias=False)

  def forward(self, tokens_BxT):
    return self.lm_head(self.norm(self.stack(self.embed(tokens_BxT), causal=True)[0]))

  @classmethod
  def from_hf(cls, hf_model, attention=Attention()):
    """From a `LlamaForCausalLM` (Linear weights already [out, in])."""
    c = hf_model.config
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    model = cls(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size,
                c.vocab_size, attention, c.rms_norm_eps, theta)
    sd = dict(hf_model.state_dict())
    names = {f"{mine}.weight": (f"{theirs}.weight", False)
             for mine, theirs in (("query", "self_attn.q_proj"), ("key", "self_attn.k_proj"),
                                  ("value", "self_attn.v_proj"), ("out", "self_attn.o_proj"),
                                  ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                                  ("down", "mlp.down_proj"), ("attention_norm", "input_layernorm"),
                                  ("mlp_norm", "post_attention_layernorm"))}
    ours = _load_stack(model, sd, "model.layers.", names)
    ours.update({"embed.weight": sd["model.embed_tokens.weight"],
                 "norm.weight": sd["model.norm.weight"], "lm_head.weight": sd["lm_head.weight"]})
    model.load_state_dict({k: v.contiguous() for k, v in ours.items()})
    return model.eval()

  def to_jax(self, tensors):
    t = {k: v.detach().numpy() for k, v in tensors.items()}
    return {"token_embedding": {"embedding": t["embed.weight"]},
            "final_norm": {"scale": t["norm.weight"]},
            "lm_head": {"kernel": t["lm_head.weight"].T},
            "decoder": _stack_to_jax(t, self.num_heads)}


def _stack_to_jax(tensors, num_heads):
  stack = {k[len("stack."):]: np.asarray(v) for k, v in tensors.items() if k.startswith("stack.")}
  return torch_reference.stack_tensors_to_jax(stack, num_heads)
