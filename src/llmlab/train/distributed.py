"""One process or many (torchrun): process group, device, DDP / FSDP2 wrapping, small collectives.

Every function here is a no-op (or the identity) in a single process, so the loop reads the same
either way. Under `torchrun --nproc_per_node=N`, RANK / WORLD_SIZE / LOCAL_RANK come from the
environment; the backend is nccl on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llmlab.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device_pref: str) -> DistInfo:
    """Join the process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=_device_id(device))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Wrapping


def wrap_for_training(step_module: nn.Module, model: nn.Module, info: DistInfo, parallelism: str) -> nn.Module:
    """The module the train step calls. `step_module` computes the loss around `model`.

    ddp: DistributedDataParallel averages gradients over ranks (bucketed all-reduce during
    backward). fsdp: FSDP2 `fully_shard` on each block of every ModuleList and on the root, in
    place -- parameters become sharded DTensors, gathered layer by layer in forward and backward."""
    if not info.distributed:
        return step_module
    if parallelism == "fsdp":
        _fully_shard(model, info)
        return step_module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(step_module, device_ids=device_ids)


def _fully_shard(model: nn.Module, info: DistInfo) -> None:
    # FSDP2 and distributed checkpointing: loaded by multi-process FSDP runs only (heavy, and absent
    # from torch builds without distributed support)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    # With a padded vocabulary the model returns its logits as a view (padding sliced off); FSDP2 warns that
    # an in-place op on it would skip a hook. The loss only reads the logits, so the warning is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextlib.contextmanager
def no_sync(train_module: nn.Module, model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-steps (gradients accumulate locally)."""
    if sync:
        yield
    elif is_ddp(train_module):
        with train_module.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def is_fsdp(model: nn.Module) -> bool:
    """fully_shard swaps the module's class for one with FSDP2's methods."""
    return hasattr(model, "set_requires_gradient_sync")


def is_ddp(module: nn.Module) -> bool:
    """DDP-wrapped, compiled or not (torch.compile wraps it in an OptimizedModule)."""
    return isinstance(getattr(module, "_orig_mod", module), DistributedDataParallel)


# ---------------------------------------------------------------------------------------------
# Collectives (identity in one process)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / dist.get_world_size()
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when the flag is set on any rank (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's obj on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Full (unsharded) state dicts for checkpoints


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer state as plain CPU tensors; a collective under FSDP (all ranks call)."""
    if not is_fsdp(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (  # FSDP runs only (see _fully_shard)
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    if not is_fsdp(model):
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import (  # FSDP runs only (see _fully_shard)
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
