"""python -m mha_jax.launch {local,tpu,slurm,gke} [options] -- <command ...>

  local  P processes × D CPU devices on this machine (try multi-host before a pod):
         python -m mha_jax.launch local --processes=2 --devices_per_process=4 -- \\
             python -m mha_jax.main --config=configs/gpt2_wikitext103.py:smoke --workdir=runs/mp
  tpu    every worker of a TPU VM slice (recipes/tpu_vm.sh)
  slurm  sbatch + srun on GPU nodes (recipes/slurm.sbatch)
  gke    a JobSet on GKE, TPU or GPU (recipes/gke_jobset.yaml)

`--dry_run` (tpu, slurm, gke) prints the commands / manifest instead of running them.
"""

from __future__ import annotations

import argparse
import sys

from mha_jax.launch import clusters, local


def _parser():
  parser = argparse.ArgumentParser(prog="python -m mha_jax.launch",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="target", required=True)
  p = sub.add_parser("local", help="P processes x D CPU devices on localhost")
  p.add_argument("--processes", type=int, required=True)
  p.add_argument("--devices_per_process", type=int, default=1)
  p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  p.add_argument("--grace_s", type=float, default=10.0,
                 help="seconds from SIGTERM (one process failed) or a forwarded SIGTERM/"
                      "SIGINT (sent to the launcher) to SIGKILL: time to save a checkpoint")
  p = sub.add_parser("tpu", help="a TPU VM pod slice via gcloud ... --worker=all")
  p.add_argument("--tpu", required=True, help="TPU VM (slice) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16, v4-32, v5p-8")
  p.add_argument("--project", default="")
  p.add_argument("--create", action="store_true", help="create the slice first")
  p.add_argument("--data_bucket", default="", help="gs://.../tensorflow_datasets to copy")
  p = sub.add_parser("slurm", help="sbatch + srun on GPU nodes")
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--per", choices=("gpu", "node"), default="gpu",
                 help="one JAX process per GPU or per node")
  p = sub.add_parser("gke", help="a JobSet on GKE (TPU slice or GPU nodes)")
  p.add_argument("--name", required=True)
  p.add_argument("--image", required=True)
  p.add_argument("--accelerator", required=True,
                 help="TPU type (v5litepod-16, v4-32, ...) or GPU 'H100-8' (8 per node)")
  p.add_argument("--nodes", type=int, default=1, help="GPU nodes (TPU: from the slice)")
  p.add_argument("--topology", default="", help="TPU topology override, e.g. 4x4")
  for name in ("tpu", "slurm", "gke"):
    sub.choices[name].add_argument("--dry_run", action="store_true",
                                   help="print what would be launched")
  return parser


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    _parser().parse_args(argv)   # --help, or the usage error below
    sys.exit("error: put the command after '--': python -m mha_jax.launch local ... -- <command>")
  split = argv.index("--")
  args, command = _parser().parse_args(argv[:split]), argv[split + 1:]
  if not command:
    sys.exit("error: no command after '--'")
  try:
    if args.target == "local":
      return local.run(command, args.processes, args.devices_per_process,
                       port=args.port or None, grace_s=args.grace_s)
    if args.target == "tpu":
      return clusters.tpu(command, accelerator_type=args.accelerator_type, tpu_name=args.tpu,
                         zone=args.zone, project=args.project, create=args.create,
                         data_bucket=args.data_bucket, dry_run=args.dry_run)
    if args.target == "slurm":
      return clusters.slurm(command, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           per=args.per, dry_run=args.dry_run)
    return clusters.gke(command, name=args.name, image=args.image, accelerator=args.accelerator,
                       num_nodes=args.nodes, topology=args.topology, dry_run=args.dry_run)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  sys.exit(main())
