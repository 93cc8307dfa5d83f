"""The local launcher, the cluster recipes' dry-runs, and the distributed set-up's
reading of flags and environment (no JAX processes are started here)."""

import importlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from mha_jax import distributed
from mha_jax.launch import clusters

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Run:
  def __init__(self, returncode, stdout, stderr):
    self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def launch(capfd):
  """launch(*args) runs `python -m mha_jax.launch *args` in this process."""
  cli = importlib.import_module("mha_jax.launch.__main__")

  def run(*args):
    try:
      code = cli.main(list(args))
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 1)
    out, err = capfd.readouterr()
    return Run(code, out, err)
  return run


def test_local_prefixes_lines_and_sets_each_process_env(launch):
  show = ("import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
          "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['XLA_FLAGS'])")
  run = launch("local", "--processes=3", "--devices_per_process=4", "--", sys.executable,
               "-c", show)
  assert run.returncode == 0, run.stdout + run.stderr
  lines = sorted(run.stdout.splitlines())
  assert [line.split()[:3] for line in lines] == [["[0]", "0", "3"], ["[1]", "1", "3"],
                                                    ["[2]", "2", "3"]]
  assert len({line.split()[3] for line in lines}) == 1   # one coordinator for all
  assert all(line.endswith("--xla_force_host_platform_device_count=4") for line in lines)


def test_local_failure_stops_the_others_and_exits_nonzero(launch):
  # Process 1 fails at once; process 0 would sleep for a minute.
  code = ("import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); print('up', i, flush=True);"
          "sys.exit(7) if i == 1 else time.sleep(60)")
  start = time.monotonic()
  run = launch("local", "--processes=2", "--grace_s=2", "--", sys.executable, "-c", code)
  assert run.returncode == 7
  assert time.monotonic() - start < 20
  assert "[1] up 1" in run.stdout and "process 1 exited with status 7" in run.stdout


def test_local_runs_python_with_its_own_interpreter(launch, tmp_path, monkeypatch):
  # Issue 24: a venv's python started the launcher, but PATH's `python` lacked the
  # packages; `python` in the command now means the launcher's interpreter.
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho PATH python\n")
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  run = launch("local", "--processes=2", "--", "python", "-c",
               "import sys; print(sys.executable)")
  assert run.returncode == 0, run.stdout + run.stderr
  assert sorted(run.stdout.splitlines()) == [f"[0] {sys.executable}", f"[1] {sys.executable}"]


def test_local_forwards_a_signal_once_then_kills_after_the_grace_period():
  # Process 0 counts the SIGTERMs it gets for 1 s and exits; process 1 ignores them.
  # SIGTERM goes to the launcher's process group (a scheduler, a terminal's Ctrl-C).
  child = ("import os, signal, sys, time\n"
           "got = []\n"
           "i = int(os.environ['JAX_PROCESS_ID'])\n"
           "signal.signal(signal.SIGTERM, signal.SIG_IGN if i else lambda *a: got.append(1))\n"
           "print('ready', flush=True)\n"
           "while not got or i: time.sleep(0.05)\n"
           "time.sleep(1); print('SIGTERMs', len(got), flush=True)\n")
  launcher = subprocess.Popen([sys.executable, "-m", "mha_jax.launch", "local", "--processes=2",
                               "--grace_s=3", "--", sys.executable, "-c", child],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
  ready = [launcher.stdout.readline() for _ in range(2)]
  assert sorted(line.split()[1] for line in ready) == ["ready", "ready"], ready
  start = time.monotonic()
  os.killpg(launcher.pid, signal.SIGTERM)
  output = launcher.communicate(timeout=60)[0]
  assert "[0] SIGTERMs 1" in output, output   # once: not from the group and the launcher
  assert "[launch] SIGKILL to the processes still running after 3 s" in output, output
  assert launcher.returncode == 128 + signal.SIGKILL
  assert 3 <= time.monotonic() - start < 20


def test_local_needs_a_command(launch):
  run = launch("local", "--processes=2")
  assert run.returncode != 0 and "after '--'" in run.stderr


@pytest.mark.parametrize("script", ["tpu_vm.sh", "slurm.sbatch"])
def test_shell_recipes_parse(script):
  subprocess.run(["bash", "-n", str(clusters.RECIPES / script)], check=True)


def test_tpu_dry_run_runs_the_command_on_every_worker(launch):
  run = launch("tpu", "--tpu=pod", "--zone=us-west4-a", "--accelerator_type=v5litepod-16",
               "--data_bucket=gs://b/tfds", "--dry_run", "--", "python", "-m", "mha_jax.main",
               "--config=configs/gpt2_wikitext103.py:size=small", "--workdir=gs://b/run")
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0] == "# v5litepod-16: 16 chips on 4 hosts -> 4 JAX processes"
  gcloud = [line for line in lines if line.startswith("gcloud compute tpus tpu-vm ssh pod")]
  assert len(gcloud) == 3 and all("--worker=all" in line for line in gcloud)   # code, data, run
  assert "gs://b/tfds" in gcloud[1] and "mha_jax.main" in gcloud[2]


@pytest.mark.parametrize("accelerator,hosts", [("v4-32", 4), ("v5p-8", 1), ("v5litepod-8", 1),
                                               ("v6e-16", 4)])
def test_tpu_slices_have_one_process_per_host(launch, accelerator, hosts):
  run = launch("tpu", "--tpu=t", "--zone=z", f"--accelerator_type={accelerator}", "--dry_run",
               "--", "true")
  assert f"-> {hosts} JAX processes" in run.stdout.splitlines()[0]


@pytest.mark.parametrize("per,processes,tasks", [("gpu", 16, 8), ("node", 2, 1)])
def test_slurm_dry_run(launch, per, processes, tasks):
  run = launch("slurm", "--nodes=2", "--gpus_per_node=8", f"--per={per}", "--dry_run", "--",
               "python", "-m", "mha_jax.main", "--config=c.py", "--workdir=/shared/w")
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0].startswith(f"sbatch --nodes=2 --ntasks-per-node={tasks} --gpus-per-node=8 ")
  assert f"# {processes} JAX processes" in lines[1]
  assert lines[2].startswith(f"srun --nodes=2 --ntasks-per-node={tasks} ")
  assert lines[2].endswith("python -m mha_jax.main --config=c.py --workdir=/shared/w")


@pytest.mark.parametrize("accelerator,nodes,pods,resource,per_pod", [
    ("v4-32", 1, 4, "google.com/tpu", 4), ("v5litepod-16", 1, 4, "google.com/tpu", 4),
    ("H100-8", 3, 3, "nvidia.com/gpu", 8)])
def test_gke_jobset_renders_valid_yaml(launch, accelerator, nodes, pods, resource, per_pod):
  manifest, count = clusters.jobset_manifest(["python", "-m", "mha_jax.main", "--workdir=gs://w"],
                                            name="mha", image="img:1", accelerator=accelerator,
                                            num_nodes=nodes)
  job = yaml.safe_load(manifest)
  spec = job["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert count == pods and spec["parallelism"] == spec["completions"] == pods
  container = spec["template"]["spec"]["containers"][0]
  assert container["resources"]["limits"][resource] == per_pod
  env = {e["name"]: e.get("value") for e in container["env"]}
  assert env["JAX_NUM_PROCESSES"] == str(pods)
  assert container["command"][-1] == "python -m mha_jax.main --workdir=gs://w"
  run = launch("gke", "--name=mha", "--image=img:1", f"--accelerator={accelerator}",
               f"--nodes={nodes}", "--dry_run", "--", "python", "-m", "mha_jax.main")
  assert run.returncode == 0 and f"{pods} pods -> {pods} JAX processes" in run.stdout


def test_resolve_reads_arguments_then_environment_then_clusters(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
               "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
               "TPU_PROCESS_ADDRESSES", "MEGASCALE_NUM_SLICES"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.resolve() is None
  assert distributed.resolve("h:1", 2, 1) == distributed.Cluster("arguments", "h:1", 2, 1)
  with pytest.raises(distributed.DistributedError, match="go together"):
    distributed.resolve("h:1", 2, None)
  with pytest.raises(distributed.DistributedError, match=r"process_id=2 is not in \[0, num_processes=2\)"):
    distributed.resolve("h:1", 2, 2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  with pytest.raises(distributed.DistributedError, match="JAX_COORDINATOR_ADDRESS"):
    distributed.resolve()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  assert distributed.resolve() == distributed.Cluster("environment", "10.0.0.1:8476", 4, 3)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  monkeypatch.setenv("SLURM_JOB_ID", "12")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  assert distributed.resolve().source == "detected:slurm"
