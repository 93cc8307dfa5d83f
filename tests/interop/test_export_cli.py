"""`python -m mha_jax.interop.export`: a training run → a Hugging Face directory that
carries the run's tokenizer and valid end-of-text ids (issue 24 §2: exports had no
tokenizer and bos/eos_token_id=50256 for an 85-token vocabulary), with the score
scale honoured; bad invocations are one line and leave nothing behind."""

import json
import subprocess
import sys
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mha_jax import config_util, interop, models
from mha_jax.data import offline, tokenizers
from mha_jax.interop import export, hf_tokenizer
from mha_jax.train import checkpoint, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = "ROMEO:\nO, she doth teach the torches to burn bright!\n"


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
  """A 1-step GPT-2 smoke run (characters, max_len 64), standard attention, score scale 30."""
  workdir = tmp_path_factory.mktemp("runs") / "scaled"
  config = config_util.load_config(f"{ROOT}/configs/gpt2_wikitext103.py:smoke")
  config.model.attention.score_scale = 30.0   # far from 1/√8: it shows at init
  config.update(total_steps=1, eval_every=0, checkpoint_every=1, progress_bar=False)
  train_and_evaluate(config, str(workdir))
  return workdir


def run_export(capsys, *args):
  status = export.main(["export", *args])
  captured = capsys.readouterr()
  return status, captured.out, captured.err.splitlines()


def test_export_carries_tokenizer_ids_and_score_scale(scaled_run, tmp_path, capsys):
  out = tmp_path / "hf"
  status, printed, err = run_export(capsys, f"--workdir={scaled_run}", f"--out={out}")
  assert status == 0 and err == [], err
  assert "tokenizer char (85 ids, end-of-text 0)" in printed and "trust_remote_code" in printed
  config = json.loads((out / "config.json").read_text())
  assert config["vocab_size"] == 85
  assert config["bos_token_id"] == config["eos_token_id"] == config["pad_token_id"] == 0
  # The HF tokenizer reads text into the ids the run trained on.
  ours = tokenizers.CharTokenizer(offline.shakespeare_alphabet(""))
  hf_tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
  assert hf_tok.encode(TEXT, add_special_tokens=False) == ours.encode_batch([TEXT])[0]
  assert hf_tok.eos_token_id == 0
  # Logits of the transformers model equal mha_jax's on the checkpoint's params.
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
  model = interop.model_from_pretrained(str(out))
  assert model.stack.attention.score_scale == 30.0
  params = checkpoint.load_params(str(scaled_run))
  ids = np.asarray([ours.encode_batch([TEXT])[0][:40]])
  expected = np.asarray(model.apply({"params": params}, jnp.asarray(ids))[0])
  with torch.no_grad():
    got = hf(torch.as_tensor(ids)).logits.numpy()
  assert np.abs(got - expected).max() <= 1e-4
  unscaled = models.build_model("gpt2", **{**interop.model_options_from_pretrained(str(out))[1],
                                          "attention": {"kind": "standard"}})
  stock = np.asarray(unscaled.apply({"params": params}, jnp.asarray(ids))[0])
  assert np.abs(stock - expected).max() > 1e-3   # the scale matters on these weights


def test_export_without_a_tokenizer_writes_no_ids_outside_the_vocabulary(tmp_path):
  model = models.build_model("gpt2", num_layers=1, width=16, num_heads=2, mlp_dim=24,
                             vocab_size=85, max_len=16)
  params = model.init(__import__("jax").random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  interop.export_pretrained(params, model, str(tmp_path / "plain"))
  config = transformers.AutoConfig.from_pretrained(tmp_path / "plain")
  for name in ("bos_token_id", "eos_token_id"):   # were GPT2Config's 50256
    assert getattr(config, name) is None
  with pytest.raises(ValueError, match=r"eos_id=85 is outside the vocabulary \[0, 85\)"):
    interop.export_pretrained(params, model, str(tmp_path / "bad"), eos_id=85)
  assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args, message", [
    (["--workdir={run}"], "--workdir and --out are required"),
    (["--workdir={tmp}/missing", "--out={tmp}/out"], "--workdir={tmp}/missing has no config.json"),
    (["--workdir={run}", "--out={tmp}/full"], "--out={tmp}/full exists and is not an empty"),
    (["--workdir={run}", "--out={tmp}/no/such/out"], "its parent folder {tmp}/no/such does not"),
    (["--workdir={run}", "--out={tmp}/out", "--weights_format=pt"],
     "--weights_format=pt: value should be one of <safetensors|bin>"),
    (["--workdir={run}", "--out={tmp}/out", "--timm"], "timm=True is for ViT models only"),
])
def test_bad_invocations_are_one_line(args, message, scaled_run, tmp_path, capsys):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep").write_text("")
  args = [a.format(run=scaled_run, tmp=tmp_path) for a in args]
  status, _, err = run_export(capsys, *args)
  assert status == 1 and len(err) == 1 and err[0].startswith("error: "), err
  assert message.format(tmp=tmp_path) in err[0], err[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]   # nothing created


def test_command_line_entry_point(scaled_run, tmp_path):
  run = subprocess.run([sys.executable, "-m", "mha_jax.interop.export",
                        f"--workdir={scaled_run}", f"--out={tmp_path}/out", "--weights_format=bin"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stderr == "" and run.stdout.startswith(f"exported {scaled_run} to {tmp_path}/out")
  assert (tmp_path / "out" / "pytorch_model.bin").exists()


@pytest.mark.slow
def test_bpe_tokenizer_matches_tiktoken():
  """The GPT-2 BPE export reads text into the ids mha_jax.data's tiktoken encoding gives."""
  ours = tokenizers.gpt2_tokenizer("")
  hf_tok = hf_tokenizer.bpe_tokenizer(offline.gpt2_tiktoken_path(""), tokenizers.GPT2_PATTERN)
  text = "Hello  world,\n\nit's   Élan 1234 héllo!!  \t<tab> 🙂 end"
  assert hf_tok.encode(text, add_special_tokens=False) == ours.encode_batch([text])[0]
  assert hf_tok.eos_token_id == ours.eos_id == 50256
  assert hf_tok.decode(ours.encode_batch([text])[0]) == text
