"""Runs every benchmark in this folder, each in its own process, and writes one JSON.

A benchmark is any benchmarks/<name>.py except this file and helpers named _*.py.
Each imports `_common`, whose absl flags give it `--quick` (tiny shapes, checks the
output, not speed) and `--json_out=PATH` (where its results go), and prints its own
table; `discover` refuses a script that does not, so none is silently skipped.

    python benchmarks/run_all.py                      # everything, full size
    python benchmarks/run_all.py --quick              # what CI runs
    python benchmarks/run_all.py --only=step_cost,tpu_aot --out=/tmp/bench.json \
        --flag=step_cost:--lengths=256,4096 --flag=step_cost:--repeats=2
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_bool("quick", False, "pass --quick to every benchmark")
flags.DEFINE_bool("list", False, "print the benchmarks' names, one a line, and exit")
flags.DEFINE_list("only", [], "run only these benchmarks (file stems)")
flags.DEFINE_string("out", "benchmark_results.json", "where the combined JSON goes")
flags.DEFINE_multi_string("flag", [], "NAME:--FLAG=VALUE passed to one benchmark, e.g. "
                          "--flag=step_cost:--lengths=256,4096 (repeatable)")
FLAGS = flags.FLAGS
HERE = pathlib.Path(__file__).resolve().parent


def discover():
  """Stems of every benchmark script, sorted; ValueError naming any that lacks the
  `_common` interface."""
  scripts = sorted(p for p in HERE.glob("*.py")
                   if not p.name.startswith("_") and p.name != pathlib.Path(__file__).name)
  lacking = [p.name for p in scripts
             if not re.search(r"^import _common\b", p.read_text(), re.MULTILINE)]
  if lacking:
    raise ValueError(f"benchmarks {lacking} do not import _common (its --quick and --json_out "
                     f"flags); every benchmarks/*.py not named _* must")
  return [p.stem for p in scripts]


def run_one(name, tmp):
  out = pathlib.Path(tmp) / f"{name}.json"
  args = [sys.executable, str(HERE / f"{name}.py"), f"--json_out={out}"]
  args += [extra.split(":", 1)[1] for extra in FLAGS.flag if extra.split(":", 1)[0] == name]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
  print(f"\n=== {name} ===", flush=True)
  start = time.perf_counter()
  rc = subprocess.run(args + (["--quick"] if FLAGS.quick else []), env=env).returncode
  result = json.loads(out.read_text()) if out.exists() else None
  return {"returncode": rc, "seconds": time.perf_counter() - start, "result": result}


def main(argv):
  del argv
  names = discover()
  if FLAGS.list:
    print("\n".join(names))
    return
  unknown = set(FLAGS.only) - set(names)
  if unknown:
    raise SystemExit(f"--only names unknown benchmarks {sorted(unknown)}; allowed: {names}")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in FLAGS.only or names:
      results[name] = run_one(name, tmp)
  pathlib.Path(FLAGS.out).write_text(json.dumps(
      {"quick": FLAGS.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "benchmarks": results}, indent=1))
  failed = [name for name, r in results.items() if r["returncode"] or r["result"] is None]
  print(f"\nwrote {FLAGS.out}; " + (f"FAILED: {failed}" if failed else "all benchmarks ran"))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
