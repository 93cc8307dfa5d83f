"""Each benchmark's quick mode (what CI runs): it runs through benchmarks/run_all.py
in its own process and writes the JSON rows its README promises. Shapes, not speed."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
NAMES = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--list"], check=True,
                       capture_output=True, text=True).stdout.split()
pytestmark = pytest.mark.slow   # each compiles a few tiny steps in a fresh process

ROW_KEYS = {
    "attention_cost": {"length", "remat", "standard_temp_mib", "mha_temp_mib"},
    "step_cost": {"model", "length", "implementation", "step_s", "temp_mib", "rss_peak_mib",
                  "mfu", "step_s_x"},
    "tpu_aot": {"length", "kind", "per_device_mib", "flops", "roofline_ms", "per_device_x"},
    "torch_vs_jax": {"kind", "jax_s", "torch_eager_s", "torch_compile_s", "jax_over_eager"},
}


@pytest.mark.parametrize("name", NAMES)
def test_quick_mode_writes_its_rows(name, tmp_path):
  out = tmp_path / "all.json"
  env = dict(os.environ, JAX_PLATFORMS="")   # tpu_aot needs the TPU plugin for its compile
  env.pop("XLA_FLAGS", None)                 # one CPU device, as a user runs them
  subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", f"--only={name}",
                  f"--out={out}"], check=True, env=env, cwd=tmp_path)
  run = json.loads(out.read_text())["benchmarks"][name]
  assert run["returncode"] == 0
  rows = run["result"].get("rows") or run["result"]["model_rows"] + run["result"]["layer_rows"]
  assert rows and all(ROW_KEYS.get(name, set()) <= set(row) for row in rows), rows
