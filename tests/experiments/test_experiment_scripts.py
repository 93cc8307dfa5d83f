"""experiments/token_uniformity.py and experiments/compare_runs.py on two tiny real
runs (standard attention and MHA, the ViT smoke config shrunk to 6 steps): their
numbers equal the measures computed here directly, and the last eval rows."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from mha_jax import analysis, config_util, script_cli
from mha_jax.train import checkpoint, steps, tasks, train_and_evaluate
from mha_jax.train import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = ("standard", "hopfield")


def load_script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# compare_runs defines flags of the same names, so it runs as a subprocess instead.
uniformity = load_script("token_uniformity")


def tiny_config(kind):
  config = config_util.load_config(f"{ROOT}/configs/vit_cifar.py:smoke,attention={kind}")
  # eval_steps=1: each eval row is the loss of the first eval batch, which the
  # tests recompute from the checkpoint.
  config.update(total_steps=6, log_every=3, eval_every=3, eval_steps=1, checkpoint_every=0,
                progress_bar=False)
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  for kind in KINDS:
    train_and_evaluate(tiny_config(kind), str(root / kind))
  return {kind: root / kind for kind in KINDS}


def eval_rows(workdir):
  rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  return [row for row in rows if row["split"] == "eval"]


def direct_intermediates(kind, workdir):
  """First eval batch's per-layer residual stream, from params loaded here; checks
  they are the trained ones by reproducing the logged final eval loss."""
  config = tiny_config(kind)
  eval_input = train_lib.make_input(config, train=False)
  task = tasks.make_task(config, eval_input.info)
  model = train_lib.make_model(config.model, task)
  params = checkpoint.load_init_params(str(workdir), model)
  batch = next(iter(eval_input))
  assert np.all(batch["mask"] == 1)   # no padded example: every token pair counts
  sums = steps.eval_step(params, batch, model=model, task=task)
  np.testing.assert_allclose(sums["loss"] / sums["weight"], eval_rows(workdir)[-1]["loss"],
                             rtol=1e-5)
  _, intermediates = model.apply({"params": params}, batch["image"], train=False,
                                 return_intermediates=True)
  return np.asarray(intermediates["residual"])


@pytest.mark.slow
def test_uniformity_rows_equal_direct_measures(runs):
  for kind, workdir in runs.items():
    rows = uniformity.measure(kind, uniformity.read_config(workdir), str(workdir),
                              layers=[], num_batches=1, batch_size=0)
    assert [row["layer"] for row in rows] == [1, 2]   # middle and last of 2 layers
    x_LxBxTxD = direct_intermediates(kind, workdir)
    for row in rows:
      x_BxTxD = x_LxBxTxD[row["layer"] - 1]
      np.testing.assert_allclose(row["cosines"], analysis.pairwise_token_cosine(x_BxTxD),
                                 atol=1e-5)
      np.testing.assert_allclose(row["rank_residuals"],
                                 analysis.relative_rank_residual(x_BxTxD), rtol=1e-5)
  assert rows[0]["label"] == "hopfield α=0.5 α′=0.5 residual=scaled_branch"


def table_rows(text):
  """Printed rows as {run name: whitespace-separated fields}."""
  return {line.split()[0]: line.split() for line in text.splitlines()[1:]}


@pytest.mark.slow
def test_uniformity_cli_prints_trained_and_fresh_statistics(runs, capsys, tmp_path):
  plot = tmp_path / "violins.png"
  uniformity.FLAGS(["token_uniformity", f"--workdirs={runs['standard']}", "--layers=2",
                    f"--plot={plot}"])
  uniformity.main(None)
  fields = table_rows(capsys.readouterr().out)["standard"]
  assert fields[1:4] == ["standard", "residual=x+u", "2"]
  x_BxTxD = direct_intermediates("standard", runs["standard"])[1]
  stats = analysis.summarize(analysis.pairwise_token_cosine(x_BxTxD))
  expected = [stats["mean"], stats["median"], stats["frac_above_0.9"], stats["count"],
              float(np.mean(analysis.relative_rank_residual(x_BxTxD)))]
  np.testing.assert_allclose([float(f) for f in fields[4:9]], expected, atol=1e-4)
  assert plot.stat().st_size > 10_000

  spec = f"{ROOT}/configs/vit_cifar.py:smoke,attention=hopfield"
  uniformity.FLAGS(["token_uniformity", "--init_only", f"--configs={spec}", "--layers=1",
                    "--workdirs=", "--plot="])
  uniformity.main(None)
  fields = table_rows(capsys.readouterr().out)["init:smoke,attention=hopfield"]
  config = tiny_config("hopfield")
  eval_input = train_lib.make_input(config, train=False)
  task = tasks.make_task(config, eval_input.info)
  model = train_lib.make_model(config.model, task)
  boxed = model.init({"params": jax.random.key(config.seed)}, task.dummy_input(), train=False)
  _, intermediates = model.apply(boxed, next(iter(eval_input))["image"], train=False,
                                 return_intermediates=True)
  cosines = analysis.pairwise_token_cosine(intermediates["residual"][0])
  np.testing.assert_allclose(float(fields[6]), cosines.mean(), atol=1e-4)


def test_padding_is_left_out():
  x_BxTxD = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
  valid_BxT = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_allclose(
      uniformity.rank_residuals(x_BxTxD, valid_BxT),
      [analysis.relative_rank_residual(x_BxTxD[1:])[0],
       analysis.relative_rank_residual(x_BxTxD[:1, :3])[0]], rtol=1e-6)
  np.testing.assert_array_equal(
      uniformity.valid_tokens({"mask": np.array([1.0, 0.0])}, "image", 3),
      [[True] * 3, [False] * 3])
  x_BxTxD[0, 3:] = x_BxTxD[0, 0]   # padding equal to a real token: would add cosines of 1
  assert analysis.summarize(analysis.pairwise_token_cosine(x_BxTxD, valid_BxT))["count"] == 3 + 10


@pytest.mark.slow
def test_compare_runs_prints_final_metrics_and_signed_difference(runs, tmp_path):
  plot = tmp_path / "curves.png"
  # The MHA run first: the baseline must still default to the standard run.
  out = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "compare_runs.py"),
       f"--workdirs={runs['hopfield']},{runs['standard']}", f"--plot={plot}"],
      check=True, capture_output=True, text=True).stdout
  assert out.startswith("baseline: standard (standard residual=x+u)")
  rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
  final = {kind: eval_rows(runs[kind])[-1] for kind in KINDS}
  delta = 100 * (final["hopfield"]["accuracy"] - final["standard"]["accuracy"])
  verdict = "equal" if delta == 0 else "better" if delta > 0 else "worse"
  expected = {
      "standard": ["6", f"{final['standard']['loss']:.4f}",
                   f"{100 * final['standard']['accuracy']:.2f}%",
                   f"{100 * max(r['accuracy'] for r in eval_rows(runs['standard'])):.3f}",
                   "+0.000", "+0.0000", "baseline"],
      "hopfield": ["6", f"{final['hopfield']['loss']:.4f}",
                   f"{100 * final['hopfield']['accuracy']:.2f}%",
                   f"{100 * max(r['accuracy'] for r in eval_rows(runs['hopfield'])):.3f}",
                   f"{delta:+.3f}", f"{final['hopfield']['loss'] - final['standard']['loss']:+.4f}",
                   verdict]}
  for kind, line in rows.items():
    fields = re.split(r"\s+", line.split("residual=")[1].strip())[1:]
    assert fields == expected[kind], line
  assert plot.stat().st_size > 10_000


def missing_and_empty(tmp_path):
  (tmp_path / "empty").mkdir()
  return {"missing": (tmp_path / "missing", "is not a directory"),
          "empty": (tmp_path / "empty", "has no config.json and no ")}


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_uniformity_on_a_missing_or_empty_workdir_is_one_line(case, tmp_path, capsys):
  # Issue 24 §3: a 30–55-line traceback.
  workdir, message = missing_and_empty(tmp_path)[case]
  uniformity.FLAGS.unparse_flags()
  argv = uniformity.FLAGS(["token_uniformity", f"--workdirs={workdir}"])
  with pytest.raises(SystemExit) as exit_info:
    script_cli.guarded(uniformity.main)(argv)
  err = capsys.readouterr().err.splitlines()
  assert exit_info.value.code == 1 and len(err) == 1, err
  assert err[0] == f"error: --workdirs: {workdir} {message}" + (
      "checkpoints: not a training workdir, or one that has not saved anything yet"
      if case == "empty" else "")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]   # nothing created
  assert list((tmp_path / "empty").iterdir()) == []


def test_compare_runs_on_a_missing_or_empty_workdir_is_one_line(tmp_path):
  for workdir, message in missing_and_empty(tmp_path).values():
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare_runs.py"),
                          f"--workdirs={workdir}"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1 and run.stderr.splitlines() == [
        f"error: --workdirs: {workdir} {message}" + (
            "metrics.jsonl: not a training workdir, or one that has not saved anything yet"
            if "empty" in str(workdir) else "")], run.stderr[-2000:]
