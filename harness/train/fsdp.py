"""Fully sharded data parallel (FSDP2) for models that outgrow one GPU: shard, gather, restore.

`train.parallel=fsdp` in a job of several processes shards every transformer block (and the
root: embeddings, final norm, head) over the ranks with `torch.distributed.fsdp.fully_shard`.
Each rank keeps 1/world of the parameters, gradients and AdamW state; a block's full weights
exist only while it runs (all-gathered before, freed after), and gradients are reduce-scattered
after every micro-batch, so no rank ever holds a whole gradient either.

Why these choices:
- The model is built on the host first, with the seed, and sharded afterwards (fully_shard
  moves each rank's shard to its GPU). Initialisation is then the single-process one bit for
  bit, so an FSDP run and a DDP or one-process run of the same config start identically and
  can be compared; the host has to hold one copy of the weights, which it does for any model
  this harness trains.
- The optimiser is built after sharding, on the sharded parameters (AdamW state is then
  sharded too); parameter groups are looked up after sharding for the same reason (sharding
  replaces the Parameter objects).
- Checkpoints are consolidated: the full state is gathered to rank 0's host memory and saved
  in the same format as a single-process run, keyed the same way. A run can be resumed under
  FSDP, DDP or in one process, and evaluation and diagnostics load it like any other run.
- Parameters are gathered in fp32 and autocast does the bf16 compute, as under DDP: a bf16
  MixedPrecisionPolicy would round mHC's φ, α and biases, whose maths must stay fp32.
- Gradient norms (the clipping norm and the per-group norms in metrics.parquet) are norms of
  the WHOLE gradient: local shard sums of squares, reduced over the ranks.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # DTensor is what sharded parameters and their gradients are
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = ()


def shard(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """Shard each block, then the root, over a 1-D mesh of the job's ranks (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # tied embedding/head weights live in the root group together
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; the tensor itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a (possibly sharded or partial) tensor; a collective when sharded."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _index_of_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> the integer id `optimizer.state_dict()` gives it (order of the groups)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    order = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {n: i for i, n in enumerate(order)}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
    """(model state, optimiser state) gathered to rank 0's host, in single-process format.

    A collective: every rank must call it. Rank 0 gets the dicts, the others (None, None).
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = _options(cpu_offload=True)
    model_state = get_model_state_dict(model, options=opts)
    optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    if torch.distributed.get_rank() != 0:
        return None, None
    index = _index_of_name(model, optimizer)  # torch's full optimiser state is keyed by name
    optim_state = {
        "state": {index[n]: v for n, v in optim_state["state"].items()},
        "param_groups": [g | {"params": [index[n] for n in g["params"]]} for g in optim_state["param_groups"]],
    }
    return model_state, optim_state


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load a consolidated (single-process format) checkpoint into the sharded model/optimiser."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    name = {i: n for n, i in _index_of_name(model, optimizer).items()}
    by_name = {
        "state": {name[int(i)]: v for i, v in optim_state["state"].items()},
        "param_groups": [g | {"params": [name[int(i)] for i in g["params"]]} for g in optim_state["param_groups"]],
    }
    set_model_state_dict(model, model_state, options=_options())
    set_optimizer_state_dict(model, optimizer, by_name, options=_options())
