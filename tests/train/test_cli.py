"""The command line: every expected failure is one stderr line and exit 1
(`--debug` keeps the traceback), `--help` exits 0 with the config's fields and
arguments, and a signal during start-up exits 130 without a core."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from mha_jax import main as cli
from mha_jax import config_util
from mha_jax.train import tasks, validation
from mha_jax.train import train as train_lib
from mha_jax.train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = f"--config={ROOT}/configs/gpt2_wikitext103.py:smoke"


def run_cli(capsys, *args):
  status = cli.main(["mha-train", *args])
  captured = capsys.readouterr()
  return status, captured.out, captured.err.splitlines()


@pytest.mark.parametrize("args, message", [
    ([f"--config={ROOT}/configs/demo.py:alhpa=1"], "unknown config arg 'alhpa'; allowed: "),
    ([SMOKE, "--config.foo=1"], "--config.foo=1: the config has no field foo; list the fields"),
    ([SMOKE, "--config.optim.learning_rat=1"],
     "no field optim.learning_rat (did you mean optim.learning_rate?)"),
    ([f"--config={ROOT}/configs/nope.py"], "No such file or directory"),
    ([f"--config={ROOT}/configs/demo.py:attention=hopfield,alpha_hidden=-0.1"],
     "attention.alpha_hidden=-0.1 is outside [0, 1]"),
    ([SMOKE, "--config.model.attention.kind=hopfield", "--config.model.attention.alpha_hidden=-0.1"],
     "attention.alpha_hidden=-0.1 is outside [0, 1]"),
    ([SMOKE, "--config.model.attention.alpha=0.3"],
     "attention.alpha=0.3 is not read by attention.kind='standard'"),
    ([SMOKE, "--config.total_steps=0"], "config.total_steps=0 must be >= 1"),
    ([SMOKE, "--config.init_from=/nonexistent/run"],
     "init_from='/nonexistent/run': no checkpoint in /nonexistent/run/checkpoints"),
    # Issue 23 §4: a model option the config file leaves out is settable, a misspelt one
    # is refused naming the allowed ones.
    ([SMOKE, "--config.model.remat_policy=fulll"],
     "model: remat_policy='fulll' is not allowed; choose one of ('none', 'full'"),
    ([SMOKE, "--config.model.remat_polcy=full"],
     "no field model.remat_polcy (did you mean model.remat_policy?); allowed: attention, "
     "attention_dropout, causal, dropout, dtype, "),
    ([SMOKE, "--config.model.rope_theta=x"], "--config.model.rope_theta='x' is not a number"),
])
def test_expected_failures_are_one_line(args, message, capsys, tmp_path):
  # Issue 9 case 8: these were 15- to 57-line tracebacks; case 5: `:alpha_hidden=-0.1` exited 0.
  workdir = tmp_path / "run"
  status, _, err = run_cli(capsys, f"--workdir={workdir}", *args)
  assert status == 1 and len(err) == 1 and err[0].startswith("error: "), err
  assert message in err[0]
  assert not (workdir / "config.json").exists()   # a failed start leaves no identity behind


def test_cudnn_without_a_gpu_is_one_line_and_creates_nothing(capsys, tmp_path):
  # Issue 24 §3: a traceback, after the workdir and its checkpoints/ were made.
  status, _, err = run_cli(capsys, f"--workdir={tmp_path}/run", SMOKE,
                           "--config.model.attention.implementation=cudnn")
  assert status == 1 and err == [
      "error: attention.implementation='cudnn' needs an NVIDIA GPU (cuDNN), and this run's "
      "devices are cpu: use 'xla' or 'naive'"]
  assert not (tmp_path / "run").exists()


def test_every_model_option_is_settable(tmp_path):
  options = config_util.model_option_defaults()
  assert {"remat_policy", "scan_layers", "norm_eps", "rope_theta", "vocab_size", "pool"} <= set(
      options)
  config, _, _, _ = cli.parse_command_line(
      ["mha-train", SMOKE, f"--workdir={tmp_path}", "--config.model.remat_policy=full",
       "--config.model.scan_layers=false", "--config.model.norm_eps=1e-3",
       "--config.model.dropout=0.25"])
  assert (config.model.remat_policy, config.model.scan_layers, config.model.norm_eps,
          config.model.dropout) == ("full", False, 1e-3, 0.25)
  model = train_lib.make_model(config.model, tasks.make_task(
      config, train_lib.make_input(config, train=False).info))
  assert (model.stack.remat_policy, model.stack.scan_layers, model.stack.norm_eps) == (
      "full", False, 1e-3)


def test_fused_on_cpu_says_so_once(capsys):
  config = config_util.load_config(f"{ROOT}/configs/gpt2_wikitext103.py:smoke,attention=hopfield")
  config.model.attention.implementation = "fused"
  validation.validate(config)
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("warning: attention.implementation='fused' on CPU "
                                             "runs its Pallas kernel in interpret mode")
  config.model.attention.implementation = "naive"
  validation.validate(config)
  assert capsys.readouterr().err == ""


def test_unwritable_workdir_is_one_line(capsys, tmp_path):
  (tmp_path / "file").write_text("")
  status, _, err = run_cli(capsys, f"--workdir={tmp_path}/file/run", SMOKE)
  assert status == 1 and err == [f"error: cannot write: {tmp_path}/file/run: Not a directory"]


def test_full_disk_is_one_line_naming_the_cause(capsys, tmp_path, monkeypatch):
  def full_disk(config, directory):
    cause = OSError(errno.ENOSPC, "No space left on device", f"{directory}/config.json")
    raise RuntimeError("save failed in a background thread") from cause

  monkeypatch.setattr(workdir_lib, "write_config", full_disk)
  status, _, err = run_cli(capsys, f"--workdir={tmp_path}", SMOKE)
  assert status == 1
  assert err == [f"error: cannot write: {tmp_path}/config.json: No space left on device"]
  assert not (tmp_path / workdir_lib.LOCK).exists()   # released on the way out


def test_debug_shows_the_traceback(capsys, tmp_path):
  with pytest.raises(ValueError, match="total_steps=0"):
    cli.main(["mha-train", f"--workdir={tmp_path}", SMOKE, "--config.total_steps=0", "--debug"])


def test_help_exits_0_with_fields_and_arguments(capsys):
  # Issue 9 case 10: `--help` exited 1 and showed no config field.
  status, out, _ = run_cli(capsys, "--help")
  assert status == 0
  assert ("configs/vit_cifar.py: size=Ti, dataset=cifar100, attention=standard, alpha=0.5, "
          "alpha_hidden=None") in out
  status, out, _ = run_cli(capsys, "--help", SMOKE)
  assert status == 0 and "  --config.optim.learning_rate=0.003\n" in out
  assert "  --config.model.attention.alpha_hidden=0.5\n" in out
  assert "arguments (:key=value): size=small, attention=standard" in out
  assert "--config.model.remat_policy" in out.split("leaves to the model's defaults")[1]


def wait_for_signal_handlers(pid, timeout=60):
  """Until the child catches SIGTERM (Python alone never does): on a loaded machine
  the interpreter may need more than 1 s to reach `run`, and a signal before that
  is the interpreter's, not ours."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("SigCgt:")), 16)
    if caught >> (signal.SIGTERM - 1) & 1:
      return
    time.sleep(0.05)


@pytest.mark.slow
def test_sigint_during_start_up_exits_130_without_a_core(tmp_path):
  # Issue 9 case 7: Ctrl-C in the first seconds ended in a segfault (exit 139).
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  child = subprocess.Popen([sys.executable, "-m", "mha_jax.main", SMOKE,
                            f"--workdir={tmp_path}/run"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(1.0)
  wait_for_signal_handlers(child.pid)
  child.send_signal(signal.SIGINT)
  _, err = child.communicate(timeout=120)
  assert child.returncode == 130, err[-2000:]
  assert err.splitlines()[-1].startswith("interrupted: SIGINT during "), err[-2000:]
  assert "Traceback" not in err and "Segmentation" not in err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_full_disk_reported_by_tensorstore_as_text_is_one_line():
  # What a real full disk raised from orbax's save thread (measured on a 300 KiB tmpfs).
  error = ValueError('RESOURCE_EXHAUSTED: Error writing "opt.mu/0.0" in OCDBT database at local '
                     'file "/runs/x/checkpoints/10.orbax-checkpoint-tmp/": Failed writing: '
                     '"/runs/x/checkpoints/10.orbax-checkpoint-tmp/d/80ca": Failed to write 19316 '
                     "bytes to file 13: No space left on device [os_error_code='28']")
  assert cli.describe_error(error) == (
      "cannot write: /runs/x/checkpoints/10.orbax-checkpoint-tmp/d/80ca: No space left on device")
  assert cli.describe_error(ValueError("a bug")) is None   # unexpected: keeps its traceback
