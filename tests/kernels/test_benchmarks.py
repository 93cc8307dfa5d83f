"""Each benchmark's quick mode (what CI runs): it runs through benchmarks/run_all.py
in its own process and writes the JSON rows its README promises, with numbers
checked where a quick run can check them. Shapes and consistency, not speed."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
NAMES = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--list"], check=True,
                       capture_output=True, text=True).stdout.split()

ROW_KEYS = {
    "attention_cost": {"length", "remat", "standard_temp_mib", "mha_temp_mib"},
    "decode_speed": {"kind", "cached_tokens_per_s", "recompute_tokens_per_s", "tokens_equal"},
    "fit_table": {"model", "attention", "topology", "fits", "total_bytes", "cell"},
    "step_cost": {"model", "length", "implementation", "step_s", "temp_mib", "rss_peak_mib",
                  "mfu", "step_s_x"},
    "sweep_vmap": {"runs", "vmapped_s", "sequential_s", "speedup", "max_param_diff"},
    "tpu_aot": {"length", "kind", "per_device_mib", "flops", "roofline_ms", "per_device_x"},
    "layerwise_memory": {"length", "row", "resolved", "fits", "temp_mib"},
    "torch_vs_jax": {"kind", "jax_s", "torch_eager_s", "torch_compile_s", "jax_over_eager"},
}


def test_run_all_finds_every_benchmark_script():
  scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py")
                   if not p.name.startswith("_") and p.name != "run_all.py")
  assert NAMES == scripts
  assert {"decode_speed", "sweep_vmap", "fit_table"} <= set(NAMES)


def check_tpu_aot(result, _):
  """Every whole-model row compiled (none failed, none refused at quick size)."""
  assert result["errors"] == [] and result["refused_rows"] == []
  kinds = {row["kind"] for row in result["model_rows"]}
  assert kinds == {"standard_xla", "naive", "factorized", "fused"}


def check_sweep_vmap(result, _):
  (row,) = result["rows"]
  assert math.isfinite(row["speedup"]) and row["speedup"] > 0
  assert row["speedup"] == pytest.approx(row["sequential_s"] / row["vmapped_s"])
  assert row["max_param_diff"] < 1e-5   # both sides trained the same K runs


def check_fit_table(result, tmp_path):
  """The MHA cell equals what `python -m mha_jax.aot` computes with the flags
  fit_table's compile_entry says it stands for, and the table shows that cell."""
  mha = next(row for row in result["rows"] if row["attention"] == "MHA")
  assert mha["model"] == "GPT-2 smoke" and mha["per_chip_batch"] == 4
  cli_json = tmp_path / "cli.json"
  subprocess.run([sys.executable, "-m", "mha_jax.aot",
                  f"--config={BENCHMARKS.parent}/configs/gpt2_wikitext103.py:smoke,"
                  "attention=hopfield,alpha=0.5", "--config.model.attention.implementation=auto",
                  "--config.mesh.data=1",
                  "--config.mesh.fsdp=-1", "--config.batch_size=16",
                  "--config.model.dtype=bfloat16", f"--topology={mha['topology']}",
                  f"--remat={mha['remat_policy']}", "--noxla_flops", "--quick",
                  f"--json={cli_json}"], check=True, cwd=tmp_path)
  (cli,) = json.loads(cli_json.read_text())
  assert (cli["total_bytes"], cli["fits"]) == (mha["total_bytes"], mha["fits"])
  assert 0 < mha["total_bytes"] < mha["hbm_bytes"]
  standard = next(row for row in result["rows"] if row["attention"] == "standard")
  table_row = result["table"].splitlines()[2]
  assert table_row.split(" | ")[-2:] == [standard["cell"], mha["cell"] + " |"]


def check_layerwise_memory(result, _):
  """The quick TPU AOT run compiled the flash and layer-wise steps with Mosaic kernels
  and its ratios follow from its own bytes."""
  from tests.kernels.test_layerwise_memory import check_rows
  by_row = check_rows(result["rows"])
  assert by_row[(256, "auto")]["resolved"] == "layerwise"
  # flash: the one-slot kernel's forward + two backward calls; layerwise: the collect
  # pass's forward, the replay's forward and two backward kernels
  assert by_row[(256, "standard_flash")]["pallas_kernels"] >= 3
  assert by_row[(256, "layerwise")]["pallas_kernels"] >= 4


def check_decode_speed(result, _):
  """One row per attention kind; cached and recomputed greedy tokens equal."""
  rows = result["rows"]
  assert [row["kind"] for row in rows] == ["standard", "hopfield"]
  for row in rows:
    assert row["tokens_equal"] and row["cached_tokens_shape"] == [2, 8]
    assert row["cached_tokens_per_s"] > 0 and row["recompute_tokens_per_s"] > 0


CHECKS = {"tpu_aot": check_tpu_aot, "sweep_vmap": check_sweep_vmap,
          "fit_table": check_fit_table, "layerwise_memory": check_layerwise_memory,
          "decode_speed": check_decode_speed}


@pytest.mark.slow   # each compiles a few tiny steps in a fresh process
@pytest.mark.parametrize("name", NAMES)
def test_quick_mode_writes_its_rows(name, tmp_path):
  out = tmp_path / "all.json"
  env = dict(os.environ, JAX_PLATFORMS="")   # tpu_aot needs the TPU plugin for its compile
  env.pop("XLA_FLAGS", None)                 # one CPU device, as a user runs them
  subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", f"--only={name}",
                  f"--out={out}"], check=True, env=env, cwd=tmp_path)
  run = json.loads(out.read_text())["benchmarks"][name]
  assert run["returncode"] == 0
  result = run["result"]
  rows = result.get("rows") or result["model_rows"] + result["layer_rows"]
  assert rows and all(ROW_KEYS[name] <= set(row) for row in rows), rows
  if name in CHECKS:
    CHECKS[name](result, tmp_path)
