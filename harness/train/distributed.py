"""Data-parallel training over several processes: set-up from the environment, rank helpers.

A grid job with several tasks (SLURM `--ntasks-per-node` = GPUs per node, or submitit's local
executor) runs `train()` once per task. The launcher exports torch.distributed's variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): slurm/dispatch.py does it with
submitit's `TorchDistributedEnvironment`, and torchrun does the same. Without them (world
size 1) nothing here does anything: no process group, no DDP, the same micro-batches in the
same order, so a single-process CPU run stays bitwise identical to what it was.

The batch of a step is its `grad_accum` micro-batches, each a pure function of
(seed, step, micro). Rank r trains micro-batches r, r + world, r + 2*world, ...: the ranks see
distinct data, their union is exactly the single-process batch, and a resumed run needs no
data-loader state. DDP averages the ranks' gradients, so with each rank dividing its loss by
its own number of micro-batches the update equals the single-process one (up to the order of
floating-point sums). Rank 0 alone writes the run folder (status, metrics, checkpoints).

With `train.parallel=fsdp` the model is sharded instead of replicated (harness/train/fsdp.py): the
same micro-batch split, gradients reduce-scattered rather than all-reduced, and checkpoints
gathered to rank 0 in the single-process format.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import torch

from harness.core.errors import UserError
from harness.train import fsdp
from harness.train.fsdp import local

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Dist:
    """This process's place in the job; world 1 is the plain single-process run."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "ddp"  # train.parallel: ddp (replicate) or fsdp (shard); only with world > 1
    owns_group: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters, gradients and optimiser state split over the ranks (FSDP)."""
        return self.enabled and self.parallel == "fsdp"

    # ------------------------------------------------------------------ the step
    def micro_batches(self, grad_accum: int) -> range:
        """This rank's micro-batch indices of a step (all of them in a single process); train()
        has checked that grad_accum is a multiple of the world size (harness/config.check_world)."""
        return range(self.rank, grad_accum, self.world)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put a freshly built model on this rank: sharded under FSDP, else moved to the device.

        Call before building the optimiser: FSDP replaces the Parameter objects.
        """
        if self.sharded:
            return fsdp.shard(model, self.device, self.world)
        return model.to(self.device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel across the ranks; the model itself in one process or under FSDP."""
        if not self.enabled or self.sharded:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module, last: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch of a step.

        FSDP reduce-scatters after every micro-batch: accumulating unsharded gradients would
        hold a whole gradient per rank, which is what sharding is there to avoid.
        """
        return model.no_sync() if self.enabled and not self.sharded and not last else contextlib.nullcontext()

    # ------------------------------------------------------------------ state
    def full_state(self, model: torch.nn.Module, optimizer) -> tuple[dict | None, dict | None]:
        """(model, optimiser) state dicts on rank 0, single-process format; (None, None) elsewhere.

        Under FSDP a collective that gathers the shards, so every rank must call it.
        """
        if self.sharded:
            return fsdp.full_state(model, optimizer)
        return (model.state_dict(), optimizer.state_dict()) if self.is_main else (None, None)

    def load_state(self, model: torch.nn.Module, optimizer, model_state: dict, optim_state: dict) -> None:
        """Load a checkpoint written by any run of the same config (one process, DDP or FSDP)."""
        if self.sharded:
            return fsdp.load_full_state(model, optimizer, model_state, optim_state)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)

    @torch.no_grad()
    def grad_norms(self, groups: dict[str, list]) -> tuple[list[str], torch.Tensor]:
        """L2 norm of the whole gradient of each named parameter list, one reduction for all.

        Returns the names and a float32 tensor of their norms, left on the device: the training
        loop reads it to the host once per logging interval, not once per step. Under FSDP each
        rank holds a shard of every gradient: shard norms are combined as sqrt(sum over ranks of
        squares). Lists without a gradient get no entry.
        """
        names, norms = [], []
        for name, params in groups.items():
            grads = [local(p.grad).detach().float().norm() for p in params if p.grad is not None]
            if grads:
                names.append(name)
                norms.append(torch.linalg.vector_norm(torch.stack(grads)))
        if not norms:
            return [], torch.zeros(0, device=self.device)
        norms = torch.stack(norms)
        if self.sharded:
            norms = norms.square()
            torch.distributed.all_reduce(norms)
            norms = norms.sqrt()
        return names, norms

    # ------------------------------------------------------------------ agreement
    def _reduce(self, value: float, op) -> float:
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")  # nccl wants CUDA tensors
        t = torch.tensor([value], dtype=torch.float64, device=comm)
        torch.distributed.all_reduce(t, op=op)
        return t.item()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over the ranks, left on its device (the tensor itself in a single process).

        A device-side collective (nccl on CUDA, gloo on CPU) with no host read, so the loop can
        sum a whole logging interval's losses at once.
        """
        if not self.enabled:
            return value
        total = value.clone()  # all_reduce works in place
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (stop signals reach ranks at different steps).

        A host read under several processes: the loop asks only at logging-interval boundaries.
        """
        return bool(self._reduce(float(flag), torch.distributed.ReduceOp.MAX)) if self.enabled else flag

    def on_main(self, fn) -> None:
        """Run `fn` on rank 0; a UserError it raises is raised on every rank, so none waits forever."""
        err = None
        if self.is_main:
            try:
                fn()
            except UserError as e:
                err = e
        if self.enabled:
            box = [err]
            torch.distributed.broadcast_object_list(box, src=0)
            err = box[0]
        if err is not None:
            raise err

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_group = False


def setup(device: torch.device, parallel: str = "ddp") -> Dist:
    """Join the job's process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device, parallel=parallel)
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch through `mhc-bench grid submit` or torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())  # one GPU per process
        torch.cuda.set_device(device)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10),
        )
    return Dist(device, rank, world, local_rank, parallel, owns)
