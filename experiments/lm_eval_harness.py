"""Perplexity of an mha_jax language model under EleutherAI's lm-evaluation-harness,
against mha_jax's own eval, on our own Shakespeare-characters eval split, offline.

    python experiments/lm_eval_harness.py --run runs/gpt2_smoke --out runs/lm_eval    # a trained run
    python experiments/lm_eval_harness.py --train_steps 200 --out runs/lm_eval        # trains one first
    python experiments/lm_eval_harness.py --train_steps 200 --attention hopfield ...  # MHA: custom code

Steps: the run's params are exported (`interop.export_pretrained`) with our char
tokeniser as a `PreTrainedTokenizerFast` (`interop.hf_tokenizer`); the eval split
is written as one JSON-lines document (`dataset_path: json` over a local file,
`output_type: loglikelihood_rolling`); then the harness's own command runs it:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=<export>,trust_remote_code=True,max_length=<T>,prefix_token_id=<s₀> \\
        --tasks mha_jax_eval --include_path <out>/task --device cpu --output_path <out>/results

How the two perplexities are made the same quantity:
- Units: the harness reports word and byte perplexity, mha_jax per model token.
  The document is our token stream spelled out (EOS as "\\x1e", one byte) and the
  Shakespeare alphabet is ASCII, so bytes = tokens and byte perplexity is token
  perplexity; the script checks the count and converts
  exp(ln(byte_ppl)·bytes/tokens) in general. Word perplexity is printed too.
- Windows: mha_jax evaluates the packed stream s₀ s₁ … in disjoint windows,
  inputs s[iT:iT+T] → targets s[iT+1:iT+T+1]. The harness's rolling windows with
  max_length=T over the document s₁ … s_{kT} and a prefix token s₀ are exactly
  these windows (`prefix_token_id=s₀`), provided the last one is full: the stream
  is cut to kT+1 tokens (`--eval_tokens`, default: the whole split less its last
  partial window, whose context the harness would fill from the previous window).
So the two numbers differ only by float summation order.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from mha_jax import config_util, data, interop
from mha_jax.data import packing
from mha_jax.interop import hf_tokenizer
from mha_jax.train import checkpoint, steps, tasks, train_and_evaluate
from mha_jax.train import train as train_lib

TASK = "mha_jax_eval"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
should_decontaminate: false
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


def char_tokenizer(data_config):
  """The CharTokenizer the data package builds shakespeare_char with."""
  if data_config.name != "shakespeare_char":
    raise SystemExit(f"data {data_config.name!r}: this script reads shakespeare_char runs "
                     f"(a char tokeniser); GPT-2 BPE export is not written yet")
  return data.dataset_tokenizer(data_config)


def train_run(workdir, steps_, attention):
  """A 2-layer GPT on Shakespeare characters (configs/gpt2_wikitext103.py:smoke)."""
  config = config_util.load_config(
      f"{pathlib.Path(__file__).resolve().parents[1]}/configs/gpt2_wikitext103.py:"
      f"smoke,attention={attention}")
  config.update(total_steps=steps_, eval_every=0, checkpoint_every=0, progress_bar=False,
                log_every=max(steps_ // 4, 1))
  config.optim.warmup_steps = max(steps_ // 10, 1)
  train_and_evaluate(config, str(workdir))


def eval_stream(config, eval_tokens):
  """The eval split's stream cut to kT + 1 tokens (k full windows)."""
  stream = np.asarray(data.build_split(config.data, config.data.eval_split).source.stream)
  seq_len = config.data.seq_len
  available = (len(stream) - 1) // seq_len
  windows = available if eval_tokens < 0 else min(eval_tokens // seq_len, available)
  if windows < 1:
    raise SystemExit(f"--eval_tokens={eval_tokens} is less than one window of {seq_len}")
  return stream[:windows * seq_len + 1]


def our_perplexity(model, task, params, stream, batch_size=64):
  """mha_jax's eval (steps.eval_step, summed over the windows): per-token perplexity."""
  windows = packing.PackedSequences(stream, task.info.seq_len)
  eval_step = jax.jit(lambda p, b: steps.eval_step(p, b, model=model, task=task))
  loss = weight = 0.0
  for start in range(0, len(windows), batch_size):
    rows = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    sums = eval_step(params, batch)
    loss, weight = loss + float(sums["loss"]), weight + float(sums["weight"])
  return dict(tokens=int(weight), mean_nll=loss / weight, perplexity=data.perplexity(loss / weight))


def write_task(out, document):
  task_dir = out / "task"
  task_dir.mkdir(parents=True, exist_ok=True)
  data_file = task_dir / "eval.jsonl"
  data_file.write_text(json.dumps({"text": document}) + "\n")
  (task_dir / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data_file=data_file))
  return task_dir


def lm_eval_command(export_dir, task_dir, results_dir, seq_len, prefix_token_id, batch_size):
  model_args = (f"pretrained={export_dir},trust_remote_code=True,max_length={seq_len},"
                f"prefix_token_id={prefix_token_id},dtype=float32")
  return [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args,
          "--tasks", TASK, "--include_path", str(task_dir), "--device", "cpu",
          "--batch_size", str(batch_size), "--output_path", str(results_dir)]


def run_harness(command, out):
  """Runs the harness offline; returns its metrics for the task."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             HF_DATASETS_CACHE=str(out / "hf_datasets_cache"), TOKENIZERS_PARALLELISM="false")
  # cwd=out: `-m lm_eval` must find the package, not a file of that name in the cwd.
  done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out)
  if done.returncode:
    raise RuntimeError(f"lm_eval failed ({done.returncode}):\n{done.stderr[-4000:]}")
  results = sorted(glob.glob(str(out / "results" / "**" / "results_*.json"), recursive=True))
  if not results:
    raise RuntimeError(f"lm_eval wrote no results under {out / 'results'}")
  metrics = json.loads(pathlib.Path(results[-1]).read_text())["results"][TASK]
  return {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none")}


def evaluate(run_dir, out, eval_tokens=-1, batch_size=32):
  """Export the run, evaluate it both ways; returns the report dict."""
  with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = char_tokenizer(config.data)
  task = tasks.make_task(config, train_lib.make_input(config, train=False).info)
  model = train_lib.make_model(config.model, task)
  params = checkpoint.load_init_params(str(run_dir), model)
  stream = eval_stream(config, eval_tokens)
  ours = our_perplexity(model, task, params, stream)

  export_dir = out / "export"
  interop.export_pretrained(params, model, export_dir)
  hf_tok = hf_tokenizer.save_char_tokenizer(tokenizer, export_dir)
  document = hf_tokenizer.ids_to_text(stream[1:], tokenizer)
  if hf_tok(document)["input_ids"] != stream[1:].tolist():
    raise RuntimeError("the saved HF tokenizer does not reproduce the eval stream's ids")
  command = lm_eval_command(export_dir, write_task(out, document), out / "results",
                            config.data.seq_len, int(stream[0]), batch_size)
  theirs = run_harness(command, out)
  num_bytes, num_tokens = len(document.encode("utf-8")), len(stream) - 1
  harness_token_ppl = float(np.exp(np.log(theirs["byte_perplexity"]) * num_bytes / num_tokens))
  return dict(run=str(run_dir), attention=config.model.attention.to_dict(),
              eval_tokens=num_tokens, bytes=num_bytes, ours=ours, harness=theirs,
              harness_token_perplexity=harness_token_ppl,
              relative_difference=abs(harness_token_ppl / ours["perplexity"] - 1),
              command="lm_eval " + " ".join(command[3:]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", help="an mha_jax workdir (config.json + checkpoint) of a "
                      "shakespeare_char GPT-2 / LLaMA run")
  parser.add_argument("--train_steps", type=int, default=200,
                      help="without --run: train the smoke GPT-2 this many steps first")
  parser.add_argument("--attention", default="standard", choices=("standard", "hopfield"))
  parser.add_argument("--eval_tokens", type=int, default=-1, help="-1: the whole eval split")
  parser.add_argument("--batch_size", type=int, default=32, help="harness batch size")
  parser.add_argument("--out", default="runs/lm_eval")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out).resolve()
  run_dir = pathlib.Path(args.run) if args.run else out / "run"
  if not args.run:
    train_run(run_dir, args.train_steps, args.attention)
  report = evaluate(run_dir, out, args.eval_tokens, args.batch_size)
  (out / "report.json").write_text(json.dumps(report, indent=1))
  print(f"{report['eval_tokens']} tokens of our eval split: mha_jax perplexity "
        f"{report['ours']['perplexity']:.4f}, lm-eval {report['harness_token_perplexity']:.4f} "
        f"per token (byte {report['harness']['byte_perplexity']:.4f}, word "
        f"{report['harness']['word_perplexity']:.2f}); relative difference "
        f"{report['relative_difference']:.1e}")
  print(f"lm-eval command (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1): {report['command']}")
  return report


if __name__ == "__main__":
  main()
