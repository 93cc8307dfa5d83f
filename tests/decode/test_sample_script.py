"""experiments/sample.py: greedy ids on a Hugging Face GPT-2 directory equal
transformers' generate(do_sample=False); a tiny training workdir samples text
through its character tokenizer. Both run the script as a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import transformers

from mha_jax.train import config_util, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_script(*args):
  """experiments/sample.py in a subprocess (scripts define absl flags of the same
  names); returns its parsed last stdout line."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, str(ROOT / "experiments" / "sample.py"), *args,
                           "--json"], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_greedy_ids_match_transformers_generate(tmp_path):
  config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=67,
                                   n_positions=32, bos_token_id=66, eos_token_id=66,
                                   attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():   # GPT-2's 0.02 init gives near-uniform logits: spread them
    for p in model.parameters():
      p.mul_(6.0)
  model.save_pretrained(tmp_path)
  prompt = [5, 17, 3, 42, 8]
  with torch.no_grad():
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              pad_token_id=66)[0, len(prompt):].tolist()
  got = run_script(f"--checkpoint={tmp_path}", "--prompt_ids=" + ",".join(map(str, prompt)),
                   "--max_new_tokens=12", "--temperature=0")
  assert got == {"tokens": expected, "text": None}
  assert len(set(expected)) > 1


@pytest.mark.slow
def test_samples_text_from_a_training_workdir(tmp_path):
  config = config_util.load_config(f"{ROOT}/configs/llama_lm.py:smoke,attention=hopfield")
  config.update(total_steps=1, batch_size=8, log_every=1, eval_every=0, checkpoint_every=1,
                progress_bar=False)
  train_and_evaluate(config, str(tmp_path))
  got = run_script(f"--checkpoint={tmp_path}", "--prompt=ROMEO:", "--max_new_tokens=10",
                   "--temperature=0.9", "--top_k=8", "--top_p=0.95", "--seed=3")
  assert 1 <= len(got["tokens"]) <= 10
  # Characters: one per token, the end-of-text id 0 printing nothing.
  assert len(got["text"]) == sum(t != 0 for t in got["tokens"])
