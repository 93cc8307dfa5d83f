"""HF PyTorch models → mha_jax: same logits (fp32, ≤ 1e-4); mha_jax → HF: same tensors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mha_jax import interop
from mha_jax.interop import common, vit

TOL = 1e-4


def tokens(vocab, batch=2, length=11, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length))


def images_nchw(size, batch=2, seed=0):
  return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def torch_logits(model, x):
  with torch.no_grad():
    return model(torch.as_tensor(x)).logits.numpy()


def jax_logits(model, params, x):
  logits, _ = model.apply({"params": params}, jnp.asarray(x))
  return np.asarray(logits)


def assert_state_dicts_equal(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("scan_layers", [True, False])
def test_gpt2_logits(hf_gpt2, scan_layers):
  hf, directory = hf_gpt2
  model = interop.model_from_pretrained(directory, scan_layers=scan_layers)
  assert (model.stack.num_layers, model.stack.num_heads, model.stack.mlp_dim) == (3, 5, 56)
  params = interop.load_pretrained(directory, model)
  x = tokens(97)
  diff = np.abs(jax_logits(model, params, x) - torch_logits(hf, x)).max()
  assert diff <= TOL


def test_gpt2_padding_mask_matches_hf_attention_mask(hf_gpt2):
  """Right padding: the real positions' logits agree with HF's attention_mask."""
  hf, directory = hf_gpt2
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  x = tokens(97)
  valid = np.ones_like(x, bool)
  valid[1, 7:] = False
  ours, _ = model.apply({"params": params}, jnp.asarray(x), padding_mask=jnp.asarray(valid))
  with torch.no_grad():
    theirs = hf(torch.as_tensor(x), attention_mask=torch.as_tensor(valid.astype(np.int64))).logits
  assert np.abs(np.asarray(ours)[valid] - theirs.numpy()[valid]).max() <= TOL


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_gpt2_export_reloads_identically(hf_gpt2, tmp_path, weights_format):
  hf, directory = hf_gpt2
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  out = interop.export_pretrained(params, model, str(tmp_path / "out"),
                                  weights_format=weights_format)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
  assert_state_dicts_equal(reloaded.state_dict(), hf.state_dict())
  x = tokens(97, seed=1)
  np.testing.assert_array_equal(torch_logits(reloaded, x), torch_logits(hf, x))
  assert_params_equal(interop.load_pretrained(out, model), params)  # and our own reader


def assert_params_equal(a, b):
  """Equal trees (nested or already flat {path: array})."""
  flat_a, flat_b = common.flatten(a), common.flatten(b)
  assert sorted(flat_a) == sorted(flat_b)
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)


def test_sharded_safetensors(hf_gpt2, tmp_path):
  hf, directory = hf_gpt2
  hf.save_pretrained(tmp_path, max_shard_size="30KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  model = interop.model_from_pretrained(directory)
  assert_params_equal(interop.load_pretrained(str(tmp_path), model),
                      interop.load_pretrained(directory, model))


def test_gpt2_export_records_mha_settings(hf_gpt2, tmp_path):
  _, directory = hf_gpt2
  model = interop.model_from_pretrained(directory, attention={"kind": "hopfield", "alpha": 0.7,
                                                              "alpha_hidden": 0.7})
  params = interop.load_pretrained(directory, model)
  interop.export_pretrained(params, model, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    recorded = json.load(f)["mha_jax_attention"]
  assert (recorded["kind"], recorded["alpha"], recorded["alpha_hidden"]) == ("hopfield", 0.7, 0.7)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_llama_logits(hf_llama, scan_layers):
  hf, directory = hf_llama
  model = interop.model_from_pretrained(directory, scan_layers=scan_layers)
  assert model.stack.rope_theta == 500.0 and model.stack.norm_eps == 1e-5
  params = interop.load_pretrained(directory, model)
  x = tokens(91)
  assert np.abs(jax_logits(model, params, x) - torch_logits(hf, x)).max() <= TOL


def test_llama_export_reloads_identically(hf_llama, tmp_path):
  hf, directory = hf_llama
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(
      interop.export_pretrained(params, model, str(tmp_path)), attn_implementation="eager").eval()
  assert_state_dicts_equal(reloaded.state_dict(), hf.state_dict())
  x = tokens(91, seed=1)
  np.testing.assert_array_equal(torch_logits(reloaded, x), torch_logits(hf, x))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_vit_logits(hf_vit, scan_layers):
  hf, directory = hf_vit
  model = interop.model_from_pretrained(directory, scan_layers=scan_layers)
  assert model.stack.norm_eps == 1e-12 and model.num_classes == 7
  params = interop.load_pretrained(directory, model)
  x = images_nchw(20)
  ours = jax_logits(model, params, x.transpose(0, 2, 3, 1))  # NCHW → NHWC
  assert np.abs(ours - torch_logits(hf, x)).max() <= TOL


def test_vit_export_reloads_identically(hf_vit, tmp_path):
  hf, directory = hf_vit
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  reloaded = transformers.ViTForImageClassification.from_pretrained(
      interop.export_pretrained(params, model, str(tmp_path)), attn_implementation="eager").eval()
  assert_state_dicts_equal(reloaded.state_dict(), hf.state_dict())


def test_vit_in_memory_state_dict_names(hf_vit):
  """transformers 5 renames ViT modules in memory (q_proj, mlp.fc1); both spellings load."""
  hf, directory = hf_vit
  state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert "vit.layers.0.attention.q_proj.weight" in state_dict
  params, _ = vit.TABLE.import_state_dict(state_dict, 2, 3, "memory")
  model = interop.model_from_pretrained(directory, scan_layers=False)
  from_file = common.flatten(interop.load_pretrained(directory, model))
  assert_params_equal(params, from_file)


def test_vit_new_head_needs_exclude(hf_vit):
  """Transfer to another class count: strict by default, `exclude` leaves the head out."""
  _, directory = hf_vit
  model = interop.model_from_pretrained(directory, num_classes=10)
  misfit = r"'classifier\.(weight|bias)' gives head/\w+ shape \((36, )?7,?\)"
  with pytest.raises(ValueError, match=misfit):
    interop.load_pretrained(directory, model)
  params = interop.load_pretrained(directory, model, exclude="^head/")
  assert "head" not in params
  assert params["encoder"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 36, 50)


@pytest.mark.slow
def test_compare_pytorch_script(tmp_path):
  """experiments/compare_pytorch.py: every row within the parity bound, MHA not vacuous."""
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "compare_pytorch.py")
  spec = importlib.util.spec_from_file_location("compare_pytorch", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  report = script.main(["--family", "vit", "--alpha", "0.7", "--alpha_hidden", "0.7",
                        "--json", str(tmp_path / "report.json")])
  assert [r["row"].split(":")[0] for r in report["rows"]] == ["standard", "standard", "mha"]
  for row in report["rows"]:
    assert row["logits_max_abs"] <= TOL and row["loss_diff"] <= TOL, row
    assert row["grad_max_rel"] <= 1e-4, row
  assert report["mha_vs_standard_logits_max_abs"] > 1e-2
  assert os.path.exists(tmp_path / "report.json")
