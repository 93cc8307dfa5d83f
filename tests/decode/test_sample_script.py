"""experiments/sample.py: greedy ids on a Hugging Face GPT-2 directory equal
transformers' generate(do_sample=False); a tiny training workdir samples text
through its character tokenizer (both as a subprocess); its defaults work on a
smoke run, and every bad invocation is one `error:` line (in-process)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import transformers

from mha_jax import config_util, script_cli
from mha_jax.train import train_and_evaluate

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


# Bad invocations: one `error:` line each, exit 1 (issue 24 §3: 30–55-line tracebacks).
sample_script = None


def load_sample_script():
  """experiments/sample.py as a module, loaded once (its absl flags are global)."""
  global sample_script
  if sample_script is None:
    spec = importlib.util.spec_from_file_location("sample_script", ROOT / "experiments" / "sample.py")
    sample_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample_script)
  return sample_script


def run_in_process(capsys, *args):
  """(exit status, stdout, stderr lines) of the script's guarded main on `args`."""
  script = load_sample_script()
  script.FLAGS.unparse_flags()
  argv = script.FLAGS(["sample.py", *args])
  try:
    script_cli.guarded(script.main)(argv)
    status = 0
  except SystemExit as e:
    status = e.code
  captured = capsys.readouterr()
  return status, captured.out, captured.err.splitlines()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
  """A GPT-2 smoke workdir (1 step: max_len 64, character tokenizer) and a ViT
  smoke run's config.json beside an empty checkpoints/ folder."""
  root = tmp_path_factory.mktemp("sample")
  config = config_util.load_config(f"{ROOT}/configs/gpt2_wikitext103.py:smoke")
  config.update(total_steps=1, eval_every=0, checkpoint_every=1, progress_bar=False)
  train_and_evaluate(config, str(root / "gpt"))
  vit = root / "vit"
  (vit / "checkpoints").mkdir(parents=True)
  (vit / "config.json").write_text(
      config_util.load_config(f"{ROOT}/configs/vit_cifar.py:smoke").to_json())
  return root


@pytest.mark.parametrize("args, message", [
    (["--prompt=" + "ROMEO:" * 11], "the prompt has 66 tokens, which leaves no room to "
                                    "generate within the model's max_len=64"),
    (["--prompt=ROMEO:", "--max_new_tokens=59"],
     "--max_new_tokens=59 with a 6-token prompt: allowed 1..58"),
    (["--prompt="], "--prompt='' is empty"),
    (["--prompt_ids=3,85,-1"], "prompt ids [-1, 85] are outside the vocabulary: ids must be "
                               "in [0, 85)"),
    (["--prompt_ids=3,x"], "--prompt_ids=3,x: ids must be integers"),
    (["--prompt=Ré\u00e8"], "--prompt has characters outside the tokenizer: ['è', 'é']; "
                           "allowed: '\\n !"),
    (["--prompt=a", "--prompt_ids=3"], "give one of --prompt and --prompt_ids, not both"),
    (["--prompt=a", "--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["--checkpoint={root}/missing"], "--checkpoint={root}/missing: no such file or directory"),
    (["--checkpoint={root}/vit"], "holds a 'vit' model; sample.py generates text from gpt2 "
                                  "or llama models only"),
    (["--checkpoint={root}"], "is neither a training workdir"),
    ([], "--checkpoint is required"),
])
def test_bad_invocations_are_one_line(args, message, smoke_runs, capsys):
  if not any(a.startswith("--checkpoint") for a in args) and message != "--checkpoint is required":
    args = [f"--checkpoint={smoke_runs}/gpt", *args]
  args = [a.format(root=smoke_runs) for a in args]
  status, out, err = run_in_process(capsys, *args)
  assert status == 1 and len(err) == 1 and err[0].startswith("error: "), err
  assert message.format(root=smoke_runs) in err[0], err[0]
  assert out == ""
  assert not (smoke_runs / "missing").exists()


def test_defaults_work_on_a_smoke_checkpoint_without_log_noise(smoke_runs, capsys):
  # The old defaults (64 new tokens after the prompt) exceeded max_len=64 on every smoke
  # run; orbax's restore logged 28 INFO lines.
  status, out, err = run_in_process(capsys, f"--checkpoint={smoke_runs}/gpt", "--json")
  assert status == 0 and err == [], err
  got = json.loads(out.strip().splitlines()[-1])
  assert 1 <= len(got["tokens"]) <= 63   # after the end-of-text start token: 63 fit in 64
  status, out, err = run_in_process(capsys, f"--checkpoint={smoke_runs}/gpt", "--prompt=ROMEO:",
                                    "--temperature=0", "--json")
  assert status == 0 and err == [], err
  got = json.loads(out.strip().splitlines()[-1])
  assert 1 <= len(got["tokens"]) <= 58   # 64 − 6 prompt characters
  if len(got["tokens"]) < 58:   # stopped early: only at the end-of-text id 0
    assert got["tokens"][-1] == 0


def test_debug_shows_the_traceback(smoke_runs, capsys):
  with pytest.raises(ValueError, match="is empty"):
    run_in_process(capsys, f"--checkpoint={smoke_runs}/gpt", "--prompt=", "--debug")
