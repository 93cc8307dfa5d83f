"""Cluster launches: each fills a recipe file under recipes/ (the exact commands and
environment; these functions fill in the sizes, say how many JAX processes the
job will have, and either run it or (dry_run) print what they would run.

- tpu:   recipes/tpu_vm.sh, `gcloud compute tpus tpu-vm ssh --worker=all`
- slurm: recipes/slurm.sbatch, `sbatch` + `srun`, NCCL, one process per GPU or per node
- gke:   recipes/gke_jobset.yaml, a JobSet applied with kubectl (or the `xpk` line)
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import string
import subprocess

from mha_jax import chips

RECIPES = pathlib.Path(__file__).resolve().parent / "recipes"
TPU_SCRIPT, SLURM_SCRIPT, JOBSET = (RECIPES / "tpu_vm.sh", RECIPES / "slurm.sbatch",
                                    RECIPES / "gke_jobset.yaml")

# GKE node labels of TPU node pools, per chip.
_GKE_TPU_ACCELERATOR = {"v4": "tpu-v4-podslice", "v5e": "tpu-v5-lite-podslice",
                        "v5p": "tpu-v5p-slice", "v6e": "tpu-v6e-slice"}
_GKE_GPU_ACCELERATOR = {"H100": "nvidia-h100-80gb", "H200": "nvidia-h200-141gb"}
# Physical topology of a slice by chip count: 2-D tori (v5e, v6e), 3-D (v4, v5p).
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                128: "8x16", 256: "16x16"}
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}


def tpu_topology(tpu: chips.TpuSlice) -> str:
  table = _TOPOLOGY_3D if tpu.chip.cores_in_name else _TOPOLOGY_2D
  if tpu.num_chips not in table:
    raise ValueError(f"no known topology for {tpu.accelerator_type}; allowed chip counts: "
                     f"{sorted(table)}")
  return table[tpu.num_chips]


def _show_or_run(argv, dry_run, env=None):
  if dry_run:
    print(shlex.join(argv), flush=True)
    return 0
  return subprocess.run(argv, env=env, check=False).returncode


def tpu(command, *, accelerator_type, tpu_name, zone, project="", create=False,
        data_bucket="", dry_run=False):
  """All workers of a TPU VM slice run `command` (one JAX process per worker)."""
  tpu_slice = chips.tpu_slice(accelerator_type)
  print(f"# {tpu_slice.accelerator_type}: {tpu_slice.num_chips} chips on "
        f"{tpu_slice.num_hosts} hosts -> {tpu_slice.num_hosts} JAX processes", flush=True)
  env = dict(os.environ, TPU_NAME=tpu_name, ZONE=zone, PROJECT=project,
             ACCELERATOR_TYPE=tpu_slice.accelerator_type, DATA_BUCKET=data_bucket,
             CREATE="1" if create else "", DRY_RUN="1" if dry_run else "")
  return subprocess.run(["bash", str(TPU_SCRIPT), *command], env=env, check=False).returncode


def slurm(command, *, nodes, gpus_per_node, per="gpu", dry_run=False):
  """`sbatch` of recipes/slurm.sbatch; dry_run also prints the srun line it runs."""
  if per not in ("gpu", "node"):
    raise ValueError(f"per={per!r}; allowed: 'gpu', 'node'")
  tasks = gpus_per_node if per == "gpu" else 1
  argv = ["sbatch", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
          f"--gpus-per-node={gpus_per_node}", str(SLURM_SCRIPT), *command]
  env = dict(os.environ, PER=per)
  status = _show_or_run(argv, dry_run, env)
  if dry_run:   # what the batch script would run on the first node
    env.update(DRY_RUN="1", SLURM_JOB_NUM_NODES=str(nodes), SLURM_GPUS_ON_NODE=str(gpus_per_node))
    status = subprocess.run(["bash", str(SLURM_SCRIPT), *command], env=env,
                            check=False).returncode
  return status


def jobset_manifest(command, *, name, image, accelerator, num_nodes=1, topology="",
                    max_restarts=0):
  """The JobSet YAML for a TPU slice (accelerator 'v5litepod-16', ...) or
  `num_nodes` GPU nodes (accelerator 'H100-8': 8 GPUs per node); returns
  (manifest text, number of JAX processes)."""
  if accelerator.split("-")[0] in _GKE_GPU_ACCELERATOR:
    gpu, _, per_node = accelerator.partition("-")
    num_hosts, per_host, resource = num_nodes, int(per_node or 8), "nvidia.com/gpu"
    selector = {"cloud.google.com/gke-accelerator": _GKE_GPU_ACCELERATOR[gpu]}
  else:
    tpu_slice = chips.tpu_slice(accelerator)
    num_hosts, resource = tpu_slice.num_hosts, "google.com/tpu"
    per_host = tpu_slice.num_chips // num_hosts
    selector = {"cloud.google.com/gke-tpu-accelerator": _GKE_TPU_ACCELERATOR[tpu_slice.chip.name],
                "cloud.google.com/gke-tpu-topology": topology or tpu_topology(tpu_slice)}
  text = string.Template(JOBSET.read_text()).substitute(
      name=name, image=image, num_hosts=num_hosts, per_host=per_host, resource=resource,
      node_selector=json.dumps(selector), command=json.dumps(shlex.join(command)),
      max_restarts=max_restarts)
  return text, num_hosts


def gke(command, *, name, image, accelerator, num_nodes=1, topology="", dry_run=False):
  """`kubectl apply` of the rendered JobSet (dry_run: print it and the xpk equivalent)."""
  manifest, num_hosts = jobset_manifest(command, name=name, image=image,
                                        accelerator=accelerator, num_nodes=num_nodes,
                                        topology=topology)
  print(f"# JobSet {name}: {num_hosts} pods -> {num_hosts} JAX processes")
  if not dry_run:
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest.encode(),
                          check=False).returncode
  print("# kubectl apply -f - <<EOF")
  print(manifest, end="")
  print("# EOF")
  if accelerator.split("-")[0] not in _GKE_GPU_ACCELERATOR:
    print("# or, with XPK on an existing cluster:")
    print(shlex.join(["xpk", "workload", "create", "--cluster=YOUR_CLUSTER", f"--workload={name}",
                      f"--tpu-type={chips.tpu_slice(accelerator).accelerator_type}",
                      "--num-slices=1", f"--docker-image={image}",
                      f"--command={shlex.join(command)}"]))
  return 0
