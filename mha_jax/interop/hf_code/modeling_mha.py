"""Modern Hopfield Attention (spec §2) in Hugging Face transformers: the stock GPT-2,
LLaMA and ViT classes with only the attention and its residual replaced.

Per layer n, per head, carried from layer to layer in `carry` (one dict per model):

    s_n = scale · Q_n K_nᵀ
    H_n = α′ H_{n−1} + (1−α′) s_n         (RealFormer: H_n = H_{n−1} + s_n)
    A_n = softmax(mask(H_n)),  u_n = W_O · A_n V_n
    x  ← α x + (1−α) u_n                  (or x + (1−α)u, or x + u)

Standard attention with a score scale other than 1/√head_dim (which the stock
classes cannot hold) is kind "standard": A_n = softmax(mask(s_n)), x ← x + u_n.
A chain of H starts at layer 1 and every `reset_every` layers, from zeros or (h0 =
"first_scores") from s_n. With a KV cache the queries are the new tokens only: their
rows of H are rebuilt layer by layer from their queries and the cached keys, so the
cache stays the usual K/V cache and `generate()` works unchanged.
Written by mha_jax.interop.export_pretrained; needs only torch and transformers.
"""

import torch
from torch import nn
from transformers import GPT2LMHeadModel, LlamaForCausalLM, ViTForImageClassification
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer,
                                                      apply_rotary_pos_emb)
from transformers.models.vit.modeling_vit import ViTAttention, ViTLayer

from .configuration_mha import MhaGPT2Config, MhaLlamaConfig, MhaViTConfig


def mask_scores(h_BxNxTxS, mask, causal):
  """HF's additive or boolean mask, or (none given) causal rows for the last T of S keys."""
  t, s = h_BxNxTxS.shape[-2:]
  if mask is None and causal:
    mask = torch.ones(t, s, dtype=torch.bool, device=h_BxNxTxS.device).tril(s - t)
  if mask is None:
    return h_BxNxTxS
  if mask.dtype == torch.bool:
    return h_BxNxTxS.masked_fill(~mask, torch.finfo(torch.float32).min)
  return h_BxNxTxS + mask[..., :s].float()


def hopfield_attention(module, q_BxNxTxD, k_BxNxSxD, v_BxNxSxD, mask, dropout):
  """One layer's MHA; H_{n−1} comes from, and H_n goes to, `module.carry`."""
  att = module.config.mha_jax_attention
  scale = att["score_scale"] or q_BxNxTxD.shape[-1] ** -0.5
  s_BxNxTxS = torch.matmul(q_BxNxTxD.float(), k_BxNxSxD.float().transpose(-1, -2)) * scale
  h_BxNxTxS = s_BxNxTxS if att["kind"] == "standard" else carried_scores(module, s_BxNxTxS)
  weights = torch.softmax(mask_scores(h_BxNxTxS, mask, module.is_causal), dim=-1)
  weights = nn.functional.dropout(weights.to(v_BxNxSxD.dtype), dropout, module.training)
  out_BxTxND = torch.matmul(weights, v_BxNxSxD).transpose(1, 2).flatten(2)
  return out_BxTxND, weights


def carried_scores(module, s_BxNxTxS):
  """H_n from H_{n−1} (in `module.carry`) and this layer's scores; stores H_n."""
  att = module.config.mha_jax_attention
  n, every = module.layer_idx, att["reset_every"]
  if n == 0 or (every and n % every == 0):
    first = att["kind"] == "hopfield" and att["h0"] == "first_scores"
    h_prev = s_BxNxTxS if first else torch.zeros_like(s_BxNxTxS)
  else:
    h_prev = module.carry["hidden"]
  if att["kind"] == "hopfield":
    h_BxNxTxS = att["alpha_hidden"] * h_prev + (1 - att["alpha_hidden"]) * s_BxNxTxS
  else:
    h_BxNxTxS = h_prev + s_BxNxTxS
  module.carry["hidden"] = h_BxNxTxS
  return h_BxNxTxS


def residual(module, x, u):
  att = module.config.mha_jax_attention
  if att["kind"] != "hopfield" or att["residual"] == "standard":
    return x + u
  if att["residual"] == "convex":
    return att["alpha"] * x + (1 - att["alpha"]) * u
  return x + (1 - att["alpha"]) * u


def heads(x_BxTxD, head_dim):
  return x_BxTxD.view(*x_BxTxD.shape[:-1], -1, head_dim).transpose(1, 2)


def swap_layers(model, layers, make_layer, attention_name):
  """Replace each stock layer by its MHA subclass, all sharing one H carry."""
  carry = {}
  for n in range(len(layers)):
    layers[n] = make_layer(n)
    attention = getattr(layers[n], attention_name)
    attention.carry, attention.layer_idx = carry, n
  model.post_init()


class MhaGPT2Attention(GPT2Attention):
  def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    qkv = self.c_attn(hidden_states).split(self.split_size, 2)
    q, k, v = (heads(t, self.head_dim) for t in qkv)
    if cache is not None:
      k, v = cache.update(k, v, self.layer_idx)
    out, weights = hopfield_attention(self, q, k, v, attention_mask, self.attn_dropout.p)
    return self.resid_dropout(self.c_proj(out)), weights


class MhaGPT2Block(GPT2Block):
  def __init__(self, config, layer_idx):
    super().__init__(config, layer_idx)
    self.attn = MhaGPT2Attention(config, layer_idx=layer_idx)

  def forward(self, hidden_states, cache=None, attention_mask=None, *args, **kwargs):
    u, _ = self.attn(self.ln_1(hidden_states), cache=cache, attention_mask=attention_mask)
    x = residual(self.attn, hidden_states, u)
    return x + self.mlp(self.ln_2(x))


class MhaGPT2LMHeadModel(GPT2LMHeadModel):
  config_class = MhaGPT2Config
  _supports_sdpa = _supports_flash_attn = _supports_flex_attn = False

  def __init__(self, config):
    super().__init__(config)
    swap_layers(self, self.transformer.h, lambda n: MhaGPT2Block(config, n), "attn")


class MhaLlamaAttention(LlamaAttention):
  def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
              **kwargs):
    q, k, v = (heads(p(hidden_states), self.head_dim)
               for p in (self.q_proj, self.k_proj, self.v_proj))
    q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
    if cache is not None:
      k, v = cache.update(k, v, self.layer_idx)
    out, weights = hopfield_attention(self, q, k, v, attention_mask, self.attention_dropout)
    return self.o_proj(out), weights


class MhaLlamaDecoderLayer(LlamaDecoderLayer):
  def __init__(self, config, layer_idx):
    super().__init__(config, layer_idx)
    self.self_attn = MhaLlamaAttention(config, layer_idx)

  def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None,
              use_cache=False, position_embeddings=None, **kwargs):
    u, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                          attention_mask, cache)
    x = residual(self.self_attn, hidden_states, u)
    return x + self.mlp(self.post_attention_layernorm(x))


class MhaLlamaForCausalLM(LlamaForCausalLM):
  config_class = MhaLlamaConfig
  _supports_sdpa = _supports_flash_attn = _supports_flex_attn = False

  def __init__(self, config):
    super().__init__(config)
    swap_layers(self, self.model.layers, lambda n: MhaLlamaDecoderLayer(config, n), "self_attn")


class MhaViTAttention(ViTAttention):
  def forward(self, hidden_states, attention_mask=None, **kwargs):
    q, k, v = (heads(p(hidden_states), self.head_dim)
               for p in (self.q_proj, self.k_proj, self.v_proj))
    out, weights = hopfield_attention(self, q, k, v, attention_mask, self.attention_dropout)
    return self.o_proj(out), weights


class MhaViTLayer(ViTLayer):
  def __init__(self, config):
    super().__init__(config)
    self.attention = MhaViTAttention(config)

  def forward(self, hidden_states, attention_mask=None, **kwargs):
    u, _ = self.attention(self.layernorm_before(hidden_states), attention_mask)
    x = residual(self.attention, hidden_states, self.dropout(u))
    return x + self.dropout(self.mlp(self.layernorm_after(x)))


class MhaViTForImageClassification(ViTForImageClassification):
  config_class = MhaViTConfig
  _supports_sdpa = _supports_flash_attn = _supports_flex_attn = False

  def __init__(self, config):
    super().__init__(config)
    swap_layers(self, self.vit.layers, lambda n: MhaViTLayer(config), "attention")
