"""experiments/attention_maps.py: the maps are the model's own numbers (its carried
H with a noise H_0), a run is drawn with the config it was trained with, and a bad
workdir is one line that creates nothing."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.models import param_layout
from mha_jax.train import checkpoint, config_util, tasks, train_and_evaluate
from mha_jax.train import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOISY = "configs/gpt2_wikitext103.py:smoke,attention=hopfield"


def run_maps(*args):
  return subprocess.run([sys.executable, "experiments/attention_maps.py", *args], cwd=ROOT,
                        capture_output=True, text=True,
                        env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                             "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_maps_are_the_trained_models_hidden_state_with_a_noise_h0(tmp_path):
  """A GPT trained 2 steps with h0 = noise (a setting only its config.json holds):
  the drawn H is the model's own per-layer hidden state, whose layer 1 is
  α′·H_0 + (1−α′)·s_1 with H_0 the fixed noise draw — the old recomputation
  started from zeros — and the weights are its causal softmax."""
  config = config_util.load_config(f"{ROOT}/{NOISY}")
  config.model.attention.update(h0="noise", h0_noise_std=2.0, alpha_hidden=0.5)
  config.update(total_steps=2, log_every=1, eval_every=0, checkpoint_every=0,
                progress_bar=False)
  workdir = tmp_path / "noisy"
  train_and_evaluate(config, str(workdir))
  result = run_maps(f"--workdirs={workdir}", f"--out={tmp_path / 'maps'}")
  assert result.returncode == 0, result.stderr[-2000:]
  eval_input = train_lib.make_input(config, train=False)
  task = tasks.make_task(config, eval_input.info)
  model = train_lib.make_model(config.model, task)
  params = checkpoint.load_init_params(str(workdir), model)
  batch = jax.tree.map(lambda a: np.asarray(a[:1]), next(iter(eval_input)))
  x, kwargs = task.model_inputs(batch)
  _, inter = model.apply({"params": params}, x, train=False, return_intermediates=True, **kwargs)
  expected_LxNxTxT = np.asarray(inter["hidden_state"][:, 0], np.float64)
  drawn = np.load(next((tmp_path / "maps").glob("maps_*.npz")))
  np.testing.assert_allclose(drawn["h"], expected_LxNxTxT, atol=1e-5)
  heads, length = expected_LxNxTxT.shape[1:3]
  noise_NxTxT = 2.0 * np.asarray(attention.hidden_noise(
      0, heads, np.arange(length)[None], np.arange(length)[None])[0], np.float64)
  # H_1 − (1−α′)s_1 = α′·H_0: far from 0 (a zero-started chain) and equal to the noise part
  s_1 = np.asarray(attention.attention_scores(*first_layer_qk(model, params, x, kwargs)),
                   np.float64)[0]
  np.testing.assert_allclose(expected_LxNxTxT[0] - 0.5 * s_1, 0.5 * noise_NxTxT, atol=1e-4)
  assert np.abs(0.5 * noise_NxTxT).max() > 0.5
  causal = np.tril(np.ones((length, length), bool))
  np.testing.assert_allclose(drawn["weights"].sum(-1), 1.0, atol=1e-5)
  assert (drawn["weights"][..., ~causal] == 0).all()
  label = json.loads((tmp_path / "maps" / "attention_maps.json").read_text())[0]["label"]
  assert label.startswith("hopfield α=0.5 α′=0.5"), label


def first_layer_qk(model, params, x, kwargs):
  """Layer 1's q and k [B, T, N, D] from the model's own projections (an unscanned
  copy of it, whose per-layer modules can be captured)."""
  loop = model.clone(stack=dataclasses.replace(model.stack, scan_layers=False))
  _, state = loop.apply({"params": param_layout.unstack_layer_params(params)}, x, train=False,
                        **kwargs, capture_intermediates=True, mutable=["intermediates"])
  layer = state["intermediates"]["decoder"]["layers_0"]["attention"]
  return layer["query"]["__call__"][0], layer["key"]["__call__"][0]


def test_a_run_is_drawn_with_its_own_config_and_a_mismatch_is_an_error(tmp_path):
  workdir = tmp_path / "std_run"
  (workdir / "checkpoints" / "6").mkdir(parents=True)
  trained = config_util.load_config(f"{ROOT}/configs/vit_cifar.py:smoke,attention=standard")
  (workdir / "config.json").write_text(trained.to_json_best_effort())
  result = run_maps(f"--workdirs={workdir}",
                    "--configs=configs/vit_cifar.py:smoke,attention=hopfield",
                    f"--out={tmp_path / 'maps'}")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert "is not how" in last and "kind='hopfield' (run: 'standard')" in last
  assert "Traceback" not in result.stderr and not (tmp_path / "maps").exists()


def test_a_missing_or_empty_workdir_is_one_line_and_creates_nothing(tmp_path):
  missing = tmp_path / "no" / "such" / "run"
  empty = tmp_path / "empty"
  empty.mkdir()
  for workdir, state in ((missing, "does not exist"), (empty, "holds no trained run")):
    result = run_maps(f"--workdirs={workdir}", f"--out={tmp_path / 'maps'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"--workdirs: '{workdir}' {state}" in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "no").exists() and not list(empty.iterdir())
  assert not (tmp_path / "maps").exists()
