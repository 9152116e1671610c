"""Where a run computes: a one-axis `data` mesh over the devices, and the shardings on it.

One device in one process has no mesh at all (None): the step compiles exactly as it does
without sharding. On several devices, and across processes, the layout is JAX's own:

- parameters, optimizer state, the training split on the device and the step's numbers are
  replicated on every device (`replicated`);
- each step's global batch is split along its first axis (`split`, via `constrain` inside the
  compiled call), so every device gathers, augments and runs its part; XLA adds the reduction
  of gradients and batch statistics, and the result is the single-device result;
- stacked sweep trials are split along their trial axis instead (`split` on every leading axis).

Several processes (one per host) start with `start_processes` (cnnlab.processes) before JAX
computes anything; every process then holds the same host values, and `put` makes global arrays
of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from cnnlab.errors import SpecError

AXIS = "data"


@dataclass(frozen=True, eq=False)
class DataMesh:
    """A one-axis mesh named `data` and the two ways a value lies on it."""

    mesh: jax.sharding.Mesh

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def split(self) -> NamedSharding:
        """The first axis divided over the devices, in the mesh's device order."""
        return NamedSharding(self.mesh, P(AXIS))

    def constrain(self, x: jax.Array) -> jax.Array:
        """Inside a compiled call: lay `x` out split along its first axis."""
        return jax.lax.with_sharding_constraint(x, self.split)

    def put(self, tree, sharding: NamedSharding):
        """Host or device values, identical on every process, as global arrays laid out by
        `sharding`. One process moves them with device_put; several build each process's
        shards from its own copy (no process sends data to another)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)

        def global_array(value):
            if isinstance(value, jax.Array) and value.sharding.is_equivalent_to(
                sharding, value.ndim
            ):
                return value  # already there (a state on this mesh)
            value = np.asarray(value)
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

        return jax.tree.map(global_array, tree)


def device_count(devices: str | int) -> int:
    """How many devices `train.devices` asks for (`all`: every device of every process)."""
    available = jax.device_count()
    if devices == "all":
        return available
    if devices > available:
        where = f"{jax.process_count()} processes" if jax.process_count() > 1 else "this machine"
        raise SpecError(
            ("train", "devices"),
            f"{devices} devices asked for; {where} has {available} "
            f"({jax.devices()[0].device_kind}): set train.devices to {available} or less, or all",
        )
    return devices


def data_mesh(devices: str | int, batch_size: int) -> DataMesh | None:
    """The mesh for `train.devices` and a global batch of `batch_size`; None for one device in
    one process. A batch that does not divide over the devices is an error naming both."""
    count = device_count(devices)
    processes = jax.process_count()
    if count % processes:
        raise SpecError(
            ("train", "devices"),
            f"{count} devices do not divide over {processes} processes: give each process as "
            "many (a multiple of the process count), or all",
        )
    if batch_size % count:
        raise SpecError(
            ("train", "batch_size"),
            f"a batch of {batch_size} does not split evenly over {count} devices: set "
            f"train.batch_size to a multiple of {count}, or train.devices to a number that "
            f"divides {batch_size}",
        )
    return mesh_of(count)


def mesh_of(count: int) -> DataMesh | None:
    """A `data` mesh over `count` devices, the same number from each process; None for one."""
    if count == 1 and jax.process_count() == 1:
        return None
    per_process = count // jax.process_count()
    devices = [
        device
        for process in range(jax.process_count())
        for device in [d for d in jax.devices() if d.process_index == process][:per_process]
    ]
    # Auto axes: the compiler propagates the layout from the few places that state it.
    return DataMesh(jax.make_mesh((count,), (AXIS,), (AxisType.Auto,), devices=devices))


def trial_mesh(trials: int, devices: str | int) -> DataMesh | None:
    """The mesh that stacked trials split over: the most devices (of those `train.devices`
    allows) that divide the trial count evenly, so each device trains whole trials."""
    count = max(n for n in range(1, device_count(devices) + 1) if trials % n == 0)
    return mesh_of(count)


def describe(mesh: DataMesh | None, batch_size: int | None = None, trials: int = 0) -> dict:
    """The mesh as recorded in summary.json and shown by `inspect`: devices, their kinds,
    processes, and the images each device computes per step (of `trials` stacked trials
    split over the devices, each device trains whole ones)."""
    devices = list(mesh.mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
    kinds = sorted({f"{d.platform} ({d.device_kind})" for d in devices})
    info = {
        "devices": len(devices),
        "kinds": kinds,
        "processes": len({d.process_index for d in devices}),
    }
    if trials:
        info["trials_per_device"] = trials // len(devices)
        if batch_size is not None:
            info["per_device_batch"] = batch_size * info["trials_per_device"]
    elif batch_size is not None:
        info["per_device_batch"] = batch_size // len(devices)
    return info
