"""experiments/sample.py: greedy ids on a Hugging Face GPT-2 directory equal
transformers' generate(do_sample=False); a tiny training workdir samples text
through its character tokenizer, reproducibly under --seed."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
import transformers

from mha_jax.train import config_util, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_script():
  spec = importlib.util.spec_from_file_location("sample", ROOT / "experiments" / "sample.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sample = load_script()


def run_main(capsys, *args):
  """The script's main under absl flags; returns its parsed last stdout line."""
  sample.FLAGS(["sample.py", *args])
  try:
    sample.main([])
  finally:
    sample.FLAGS.unparse_flags()
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_greedy_ids_match_transformers_generate(tmp_path, capsys):
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
  got = run_main(capsys, f"--checkpoint={tmp_path}", "--prompt_ids=" + ",".join(map(str, prompt)),
                 "--max_new_tokens=12", "--temperature=0", "--json")
  assert got == {"tokens": expected, "text": None}
  assert len(set(expected)) > 1


@pytest.mark.slow
def test_samples_text_from_a_training_workdir(tmp_path, capsys):
  config = config_util.load_config(f"{ROOT}/configs/llama_lm.py:smoke,attention=hopfield")
  config.update(total_steps=2, batch_size=8, eval_batch_size=8, log_every=1, eval_every=2,
                eval_steps=1, checkpoint_every=2, progress_bar=False)
  train_and_evaluate(config, str(tmp_path))
  args = (f"--checkpoint={tmp_path}", "--prompt=ROMEO:", "--max_new_tokens=10",
          "--temperature=0.9", "--top_k=8", "--top_p=0.95", "--seed=3", "--json")
  first, again = run_main(capsys, *args), run_main(capsys, *args)
  assert first == again
  assert 1 <= len(first["tokens"]) <= 10
  tokenizer = sample.load(str(tmp_path))[2]
  assert first["text"] == tokenizer.decode(first["tokens"])
  assert np.all(np.asarray(first["tokens"]) < tokenizer.vocab_size)
