"""Multi-host set-up, shared by `mha_jax.main`, `mha_jax.launch` and `mha_jax.aot`.

One JAX process per host (TPU VM worker, SLURM task, Kubernetes pod) or per GPU.
`initialize()` calls `jax.distributed.initialize` when the job has more than one
process, with the coordinator, process count and id taken, first match wins, from

1. explicit arguments (main's `--coordinator_address --num_processes --process_id`),
2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
   (what `python -m mha_jax.launch local` and the Kubernetes recipe set),
3. a cluster that JAX detects by itself (TPU pod slice, SLURM, Open MPI, or
   `config.distributed=True` to ask JAX to detect one it knows).

On CPU the processes exchange collectives through gloo. `check_peers_agree` then
stops a process whose config, process count or local device count differs from
its peers' with one line, before any step is compiled (a mismatch would otherwise
hang in a collective). `IntGather` is how the processes agree on a stop step
after a signal (train/preemption.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import threading

import numpy as np

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# How long process 0 waits for all peers to register before failing (a peer
# that never starts, or one started with another process count).
DEFAULT_TIMEOUT_S = 300


class DistributedError(RuntimeError):
  """The processes of one job do not form one job; one line says why."""


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process joins the job; None fields are left to JAX's detection."""
  source: str                       # "arguments" | "environment" | "detected:<name>"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _detected_cluster():
  """Name of a multi-process cluster that JAX bootstraps by itself, or None."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if "," in hosts or int(env.get("MEGASCALE_NUM_SLICES", "1")) > 1:
    return "tpu"
  return None


def resolve(coordinator_address=None, num_processes=None, process_id=None,
            auto_detect=False) -> Cluster | None:
  """The Cluster this process belongs to, or None for a single-process run."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise DistributedError(
          "--coordinator_address, --num_processes and --process_id go together; got "
          f"{coordinator_address!r}, {num_processes!r}, {process_id!r}")
    return _checked(Cluster("arguments", coordinator_address, int(num_processes),
                            int(process_id)))
  env = os.environ
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  if env.get(ENV_NUM_PROCESSES) or env.get(ENV_PROCESS_ID):
    missing = [n for n in names if not env.get(n)]
    if missing:
      raise DistributedError(f"environment sets {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID} but "
                             f"not {', '.join(missing)}")
    return _checked(Cluster("environment", env[ENV_COORDINATOR], int(env[ENV_NUM_PROCESSES]),
                            int(env[ENV_PROCESS_ID])))
  detected = _detected_cluster()
  if detected or auto_detect:
    return Cluster(f"detected:{detected or 'by JAX'}")
  return None


def _checked(cluster):
  if cluster.num_processes < 1 or not 0 <= cluster.process_id < cluster.num_processes:
    raise DistributedError(f"process_id={cluster.process_id} is not in "
                           f"[0, num_processes={cluster.num_processes})")
  return cluster


def initialize(cluster: Cluster | None, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
  """Joins the job (no-op for None or a 1-process cluster). Must run before any
  JAX call that touches devices."""
  import jax   # here, not at the top: the launcher reads this module without JAX
  if cluster is None or cluster.num_processes == 1 or jax.distributed.is_initialized():
    return
  # Collectives between CPU devices of different processes (tests, `launch local`).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # JAX's preemption service takes SIGTERM over from Python (a C++ handler), so the
  # training loop would never see it; preemption.py agrees on a stop step itself.
  jax.config.update("jax_enable_preemption_service", False)
  who = (f"process {cluster.process_id} of {cluster.num_processes} at "
         f"{cluster.coordinator_address}" if cluster.num_processes else "a detected cluster")
  print(f"joining a multi-process job as {who} ({cluster.source}); waiting up to "
        f"{timeout_s} s for every process", file=sys.stderr, flush=True)
  # At its own deadline JAX aborts the process with a C++ stack; this one line comes
  # first (JAX is given a few seconds more, and the watchdog ends the process).
  watchdog = threading.Timer(timeout_s, _not_joined, args=(who, timeout_s, cluster.num_processes))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes,
                               cluster.process_id, initialization_timeout=int(timeout_s) + 30)
  except (RuntimeError, ValueError) as e:
    raise DistributedError(f"jax.distributed.initialize ({cluster.source}) failed after "
                           f"at most {timeout_s} s: {str(e).splitlines()[0]}") from e
  finally:
    watchdog.cancel()


def _not_joined(who, timeout_s, num_processes):
  """The peer-never-joins failure as one line; runs on the watchdog thread while
  the main thread is blocked inside JAX, so it ends the process itself."""
  many = f"all {num_processes}" if num_processes else "all the"
  sys.stderr.write(f"error: not every process joined within {timeout_s} s ({who}): start "
                   f"{many} processes with the same coordinator address, or raise "
                   "--config.distributed_timeout_s\n")
  sys.stderr.flush()
  os._exit(1)


def describe(mesh=None) -> str:
  """'process 0/2: 4 local cpu devices of 8; mesh data=2 fsdp=2 tensor=2'."""
  import jax
  text = (f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local {jax.default_backend()} devices of "
          f"{jax.device_count()}")
  if mesh is not None:
    text += "; mesh " + " ".join(f"{k}={v}" for k, v in mesh.shape.items())
  return text


def fingerprint(*parts: str) -> np.ndarray:
  """8 int32 words of a SHA-256 over `parts` (config JSON, process count, ...)."""
  digest = hashlib.sha256("\x00".join(parts).encode()).digest()
  return np.frombuffer(digest, np.int32).copy()


def check_peers_agree(config_json: str, declared_processes: int | None = None) -> None:
  """Every process must run the same config with the same process count and as
  many local devices as the others; else each process stops with one line naming
  the processes that differ."""
  import jax
  if jax.process_count() == 1:
    return
  declared = jax.process_count() if declared_processes is None else declared_processes
  mine = np.concatenate([fingerprint(config_json), [declared, jax.local_device_count()]])
  gather = IntGather()   # not process_allgather: it fails on unequal device counts
  every = gather.result(gather.start(mine))   # [processes, 10]
  counts = sorted(set(every[:, -2].tolist()))
  if counts != [jax.process_count()]:
    raise DistributedError(f"processes were started with process counts {counts}, but "
                           f"{jax.process_count()} joined: start every process alike")
  devices = every[:, -1].tolist()
  if len(set(devices)) > 1:
    raise DistributedError(f"processes 0..{len(devices) - 1} have {devices} local devices: "
                           "every process must have the same number (a batch is split "
                           "evenly across processes)")
  differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
  if differ:
    raise DistributedError(f"processes {differ} run a different config than process 0: "
                           "start every process with the same --config and overrides")


class IntGather:
  """Every process's few integers, gathered by all processes: `start(values)`
  dispatches the exchange (a collective over all devices, one row per device, so
  any local device counts; asynchronous) and `result(handle)` waits for it and
  returns the values in process order, [processes, len(values)]."""

  def __init__(self):
    import jax
    devices = jax.devices()
    self.count = jax.process_count()
    self._owners = [d.process_index for d in devices]
    mesh = jax.sharding.Mesh(np.array(devices), ("all",))
    self._spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._gather = jax.jit(lambda rows: rows, out_shardings=replicated)

  def start(self, values):
    import jax
    row = np.asarray(values, np.int32).reshape(1, -1)
    rows = [jax.device_put(row, d) for d in self._spread.addressable_devices]
    return self._gather(jax.make_array_from_single_device_arrays(
        (len(self._owners), row.shape[1]), self._spread, rows))

  def result(self, handle) -> np.ndarray:
    rows = np.asarray(handle.addressable_data(0))
    values = np.zeros((self.count, rows.shape[1]), np.int64)
    for owner, row in zip(self._owners, rows):
      values[owner] = row
    return values
