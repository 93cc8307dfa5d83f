"""Hugging Face `GPT2LMHeadModel` ↔ mha_jax "gpt2".

HF GPT-2 stores its projections as `Conv1D`, weight [in, out] (already a Flax
kernel, no transpose), with Q, K, V fused in `attn.c_attn` along the output axis.
The LM head is tied to `wte`, as in mha_jax's GPT (`embed.attend`).
"""

from __future__ import annotations

import numpy as np

from mha_jax.interop import common

# Causal-mask buffers of older checkpoints, and the tied head (a copy of wte).
IGNORE = (r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$")
GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def model_options(config):
  """mha_jax GPT options (num_layers, width, ...) from an HF GPT-2 config.json."""
  if config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights", True):
    raise ValueError("GPT-2 configs with scale_attn_by_inverse_layer_idx=True or "
                     "scale_attn_weights=False are not supported")
  act = config.get("activation_function", "gelu_new")
  if act not in GELU:
    raise ValueError(f"GPT-2 activation_function={act!r}; supported: {sorted(GELU)}")
  width = config["n_embd"]
  return dict(num_layers=config["n_layer"], width=width, num_heads=config["n_head"],
              mlp_dim=config.get("n_inner") or 4 * width, mlp=GELU[act],
              norm_eps=config.get("layer_norm_epsilon", 1e-5),
              vocab_size=config["vocab_size"], max_len=config["n_positions"])


def import_state_dict(state_dict, num_layers, num_heads, source):
  """HF state dict → ({loop-layout path: array}, {path: key})."""
  if "transformer.wte.weight" not in state_dict and "wte.weight" in state_dict:
    # The original OpenAI-converted checkpoints carry GPT2Model names (no prefix).
    state_dict = {k if k.startswith("lm_head") else f"transformer.{k}": v
                  for k, v in state_dict.items()}
  r = common.StateDictReader(state_dict, source, IGNORE)
  r.put("token_embedding/embedding", "transformer.wte.weight")
  r.put("position_embedding", "transformer.wpe.weight")
  for i in range(num_layers):
    hf, ours = f"transformer.h.{i}.", f"decoder/layers_{i}/"
    r.put_layer_norm(ours + "attention_norm", hf + "ln_1")
    r.put_layer_norm(ours + "mlp_norm", hf + "ln_2")
    qkv = [ours + f"attention/{n}" for n in ("query", "key", "value")]
    r.put_many([p + "/kernel" for p in qkv], hf + "attn.c_attn.weight",
               lambda w: [common.split_heads_in(part, num_heads)
                          for part in np.split(w, 3, axis=1)])
    r.put_many([p + "/bias" for p in qkv], hf + "attn.c_attn.bias",
               lambda b: [part.reshape(num_heads, -1) for part in np.split(b, 3)])
    r.put(ours + "attention/out/kernel", hf + "attn.c_proj.weight",
          lambda w: common.split_heads_out(w, num_heads))
    r.put(ours + "attention/out/bias", hf + "attn.c_proj.bias")
    r.put(ours + "mlp/fc1/kernel", hf + "mlp.c_fc.weight")
    r.put(ours + "mlp/fc1/bias", hf + "mlp.c_fc.bias")
    r.put(ours + "mlp/fc2/kernel", hf + "mlp.c_proj.weight")
    r.put(ours + "mlp/fc2/bias", hf + "mlp.c_proj.bias")
  r.put_layer_norm("final_norm", "transformer.ln_f")
  return r.finish()


def export_state_dict(flat, num_layers):
  """{loop-layout path: array} → HF state dict (as `save_pretrained` writes it)."""
  sd = {"transformer.wte.weight": flat["token_embedding/embedding"],
        "transformer.wpe.weight": flat["position_embedding"],
        "transformer.ln_f.weight": flat["final_norm/scale"],
        "transformer.ln_f.bias": flat["final_norm/bias"]}
  for i in range(num_layers):
    hf, ours = f"transformer.h.{i}.", f"decoder/layers_{i}/"
    att = lambda name: flat[ours + "attention/" + name]  # noqa: E731
    sd.update({
        hf + "ln_1.weight": flat[ours + "attention_norm/scale"],
        hf + "ln_1.bias": flat[ours + "attention_norm/bias"],
        hf + "attn.c_attn.weight": np.concatenate(
            [common.merge_in(att(f"{n}/kernel")) for n in ("query", "key", "value")], axis=1),
        hf + "attn.c_attn.bias": np.concatenate(
            [att(f"{n}/bias").reshape(-1) for n in ("query", "key", "value")]),
        hf + "attn.c_proj.weight": common.merge_out(att("out/kernel")),
        hf + "attn.c_proj.bias": att("out/bias"),
        hf + "ln_2.weight": flat[ours + "mlp_norm/scale"],
        hf + "ln_2.bias": flat[ours + "mlp_norm/bias"],
        hf + "mlp.c_fc.weight": flat[ours + "mlp/fc1/kernel"],
        hf + "mlp.c_fc.bias": flat[ours + "mlp/fc1/bias"],
        hf + "mlp.c_proj.weight": flat[ours + "mlp/fc2/kernel"],
        hf + "mlp.c_proj.bias": flat[ours + "mlp/fc2/bias"],
    })
  return sd


def export_config(model):
  """config.json for `GPT2LMHeadModel.from_pretrained`."""
  cfg = model.stack
  if cfg.mlp not in ("gelu_tanh", "gelu") or cfg.norm != "layernorm" or not cfg.use_bias:
    raise ValueError("only a GPT-2-shaped stack (layernorm, GELU MLP, biases) exports to HF GPT-2")
  return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=cfg.num_layers,
              n_embd=cfg.width, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
              activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              layer_norm_epsilon=cfg.norm_eps, vocab_size=model.vocab_size,
              n_positions=model.max_len, tie_word_embeddings=True)
