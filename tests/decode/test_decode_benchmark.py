"""benchmarks/decode_speed.py --quick: one JSON row per attention kind, cached and
recomputed greedy tokens equal (the speed is the benchmark's business, not a test's).
A subprocess, because benchmark scripts define absl flags of the same names."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quick_mode_writes_one_row_per_kind(tmp_path):
  out = tmp_path / "decode_speed.json"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_speed.py"), "--quick",
                  f"--json_out={out}"], check=True, env=env, cwd=tmp_path, timeout=600)
  rows = json.loads(out.read_text())["rows"]
  assert [row["kind"] for row in rows] == ["standard", "hopfield"]
  for row in rows:
    assert row["tokens_equal"] and row["cached_tokens_shape"] == [2, 8]
    assert row["cached_tokens_per_s"] > 0 and row["recompute_tokens_per_s"] > 0
