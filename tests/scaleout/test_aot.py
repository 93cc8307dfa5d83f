"""`python -m mha_jax.aot`: the real train step compiled ahead of time."""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from mha_jax.aot import fit as fit_lib
from mha_jax.aot import report
from mha_jax import chips, config_util
from mha_jax.train import optim

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = f"{ROOT}/configs/gpt2_wikitext103.py:smoke,attention=hopfield"


def test_cpu_fit_bytes_equal_parameter_count_times_dtype_times_adam():
  config = config_util.load_config(SMOKE)
  config.mesh = dict(data=8, fsdp=1, tensor=1)   # replicated state: whole trees per device
  result = fit_lib.measure(config, jax.devices()[:8], "8 simulated CPU devices",
                           with_xla_flops=False)
  info = fit_lib.dataset_info(config)
  model = fit_lib.train.make_model(config.model, fit_lib.tasks.make_task(config, info))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          np.zeros((1, config.data.seq_len), np.int32))["params"]
  count = sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)))
  assert result.params_bytes == count * 4                      # float32
  # AdamW: two float32 moments per parameter, plus int32 step counters (Adam's, the schedule's).
  tx, _ = optim.make_optimizer(config.optim, config.total_steps)
  counters = [x for x in jax.tree.leaves(jax.eval_shape(tx.init, nn.unbox(shapes))) if x.ndim == 0]
  assert result.opt_bytes == 2 * count * 4 + 4 * len(counters) and len(counters) <= 3
  assert result.total_bytes > result.params_bytes + result.opt_bytes and result.temp_bytes > 0
  length = config.data.seq_len
  assert result.carry_bytes == 2 * (32 // 8) * 4 * length * length * 4   # L·B·N·T²·4
  table = report.format_fit(result, None, chips.chip("H100"), 0.4)
  print(table)
  for row in ("parameters", "optimizer state", "temp", "total", "attention carry",
              "FLOPs/step (model)", "step time at 40% MFU", "v5e yes"):
    assert row in table


def test_auto_counts_the_layerwise_buffers_once_and_takes_the_chips_budget():
  config = config_util.load_config(SMOKE)
  config.model.attention.implementation = "auto"
  info = fit_lib.dataset_info(config)
  model = fit_lib.train.make_model(config.model, fit_lib.tasks.make_task(config, info))
  stack, length = model.stack, config.data.seq_len
  layers_, heads, head_dim = stack.num_layers, stack.num_heads, stack.head_dim
  assert length > layers_ * head_dim   # the smoke model resolves to layerwise by shape
  # q and k buffers [L, B, N, T, D] in float32, the layer counter and the weights row.
  assert fit_lib.carry_bytes(model, info, 4) == (
      2 * layers_ * 4 * heads * length * head_dim * 4 + 4 + 4 * layers_)
  budgeted = fit_lib.with_chip_budget(config, 16 * 2**30)   # a quarter of the chip's HBM
  assert budgeted.model.attention.hidden_budget_bytes == 4 * 2**30
  assert config.model.attention.hidden_budget_bytes == 0   # the caller's config is kept


@pytest.mark.slow
def test_tpu_v5e_2x2_compiles_with_libtpu(tmp_path):
  pytest.importorskip("libtpu", reason="TPU compilation needs the [tpu] extra")
  out = tmp_path / "fit.json"
  env = dict(os.environ, PYTHONPATH=str(ROOT), TPU_ACCELERATOR_TYPE="v5litepod-4")
  run = subprocess.run(
      [sys.executable, "-m", "mha_jax.aot", f"--config={SMOKE}", "--topology=v5e:2x2",
       f"--json={out}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "v5e:2x2 (4 TPU v5e devices)" in run.stdout and "of 16.00 GiB HBM (v5e): fits" in run.stdout
  (row,) = json.loads(out.read_text())
  assert row["fits"] and row["num_devices"] == 4 and row["chip"] == "v5e"
  # XLA:TPU's own FLOP count (1- and 2-layer extrapolation) near the model count.
  assert 0.7 < row["xla_flops_per_device"] * 4 / row["model_flops"] < 1.5


def run_aot(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TPU_ACCELERATOR_TYPE="v5litepod-4")
  return subprocess.run([sys.executable, "-m", "mha_jax.aot", f"--config={SMOKE}", *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    # Issue 24 §2: accepted as 8 chips (v5e slices are 2-D).
    (["--topology=v5e:2x2x2"], "--topology='v5e:2x2x2': v5e slices are 2-D (e.g. v5e:2x2"),
    (["--topology=H100:8"], "--topology='H100:8': the chip must be one of ['v4', 'v5e', 'v5p', "
                            "'v6e']"),
    # Issue 24 §2: an empty --remat silently meant the config's policy.
    (["--cpu_devices=1", "--remat="], "--remat='': allowed: auto, dots, dots_no_batch, full, "
                                      "none, qkv_proj"),
    # Issue 24 §3: tracebacks.
    (["--cpu_devices=0"], "--cpu_devices=0: give a number of devices >= 1"),
    (["--cpu_devices=1", "--config.model.attention.implementation=cudnn"],
     "attention.implementation='cudnn' needs an NVIDIA GPU"),
    # Issue 23 §4: a 30-line AttributeError traceback for a misspelt model option.
    (["--cpu_devices=1", "--config.model.remat_polcy=full"],
     "no field model.remat_polcy (did you mean model.remat_policy?); allowed: attention, "),
])
def test_bad_flags_are_one_line(args, message):
  run = run_aot(*args)
  err = run.stderr.splitlines()
  assert run.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), run.stderr[-2000:]
  assert message in err[0], err[0]


def test_model_option_from_the_command_line(tmp_path):
  # Issue 23 §4: `--config.model.remat_policy=full` (not a field of the config file) was a
  # 30-line AttributeError traceback.
  out = tmp_path / "fit.json"
  run = run_aot("--cpu_devices=2", "--xla_flops=false", "--config.model.remat_policy=full",
                "--config.model.num_heads=2", f"--json={out}")
  assert run.returncode == 0, run.stderr[-2000:]
  (row,) = json.loads(out.read_text())
  assert row["remat_policy"] == "full" and row["num_devices"] == 2


@pytest.mark.slow
def test_single_chip_v5e_compiles_and_libtpu_errors_carry_no_install_hint():
  pytest.importorskip("libtpu", reason="TPU compilation needs the [tpu] extra")
  # Issue 24 §2: v5e:1x1 could not be checked (host bounds 2x2x1 do not divide it).
  run = run_aot("--topology=v5e:1x1", "--quick", "--xla_flops=false")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "v5e:1x1 (1 TPU v5e devices)" in run.stdout
  # A shape libtpu refuses: its own reason, and no "install libtpu" with libtpu installed.
  run = run_aot("--topology=v5e:3x5", "--quick")
  assert run.returncode == 1 and "error: --topology=v5e:3x5: " in run.stderr
  assert "pip install" not in run.stderr


def auto_config(**model):
  config = config_util.load_config(SMOKE)
  config.model.attention.implementation = "auto"
  config.model.update(model)
  return config


@pytest.mark.parametrize("num_heads, window", [(4, 0), (1, 0), (4, 1)])
def test_attention_line_says_what_auto_chose_and_why(num_heads, window):
  # Issue 21 §2: the AOT tool prints which implementation `auto` chose and why.
  config = auto_config(num_heads=num_heads)
  config.model.attention.hidden_window = window
  info = fit_lib.dataset_info(config)
  model = fit_lib.train.make_model(config.model, fit_lib.tasks.make_task(config, info))
  length, layers = config.data.seq_len, config.model.num_layers
  width = (window or layers) * config.model.width // num_heads   # W·D
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  line = fit_lib.attention_choice(model, info, 4, mesh)
  if length > width:
    assert line == (f"attention: auto → layerwise (T={length} > W·D={width}: the carried q, k "
                    "are smaller than H)")
  else:
    assert line == f"attention: auto → naive (T={length} <= W·D={width}: H is no larger than " \
                   "the carried q, k)"
  config.model.attention.implementation = "layerwise"   # configured, not chosen: no line
  model = fit_lib.train.make_model(config.model, fit_lib.tasks.make_task(config, info))
  assert fit_lib.attention_choice(model, info, 4, mesh) == ""


def test_aot_tool_prints_the_auto_choice():
  run = run_aot("--cpu_devices=1", "--xla_flops=false",
                "--config.model.attention.implementation=auto", "--config.model.num_heads=1")
  assert run.returncode == 0, run.stderr[-2000:]
  width = 2 * 32   # smoke: 2 layers, width 32, one head
  assert f"attention: auto → naive (T=64 <= W·D={width}: " in run.stdout, run.stdout
