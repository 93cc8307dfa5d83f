"""Small Hugging Face models with random weights, saved as local checkpoint
directories (no download). Odd sizes so that a transposed or mis-split tensor
cannot hide behind a square shape."""

import pytest
import torch
import transformers


def _randomise(model, seed):
  """HF initialises norms to 1/0 and biases to 0: perturb everything so each tensor counts."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=generator))
  return model.eval()


def _save(model, tmp_path_factory, name):
  directory = tmp_path_factory.mktemp(name)
  model.save_pretrained(directory)
  return str(directory)


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory):
  config = transformers.GPT2Config(n_layer=3, n_embd=40, n_head=5, n_inner=56, vocab_size=97,
                                   n_positions=23, bos_token_id=0, eos_token_id=0,
                                   attn_implementation="eager")
  model = _randomise(transformers.GPT2LMHeadModel(config), 1)
  return model, _save(model, tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
  config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=48, num_attention_heads=3,
                                    num_key_value_heads=3, intermediate_size=37, vocab_size=91,
                                    max_position_embeddings=64, rms_norm_eps=1e-5,
                                    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                    bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                    attn_implementation="eager")
  model = _randomise(transformers.LlamaForCausalLM(config), 2)
  return model, _save(model, tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def hf_vit(tmp_path_factory):
  config = transformers.ViTConfig(num_hidden_layers=2, hidden_size=36, num_attention_heads=3,
                                  intermediate_size=50, image_size=20, patch_size=5,
                                  num_labels=7, attn_implementation="eager")
  model = _randomise(transformers.ViTForImageClassification(config), 3)
  return model, _save(model, tmp_path_factory, "vit")
