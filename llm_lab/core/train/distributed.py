"""Multi-process training under ``torchrun``: process-group setup and the wrappers the Trainer applies.

``torchrun --nproc_per_node=N -m llm_lab train ...`` starts N processes with ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in their environment. :func:`init_distributed` turns that into a process group (``nccl`` on CUDA,
``gloo`` on CPU); a plain ``python`` run has ``WORLD_SIZE`` unset and stays single-process.

Strategies:

* ``ddp``: every process holds the whole model; gradients are averaged across processes after backward.
* ``fsdp``: :func:`torch.distributed.fsdp.fully_shard` splits parameters, gradients and optimizer state across
  processes, gathering each block's weights only while it runs: for models that outgrow one device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedInfo", "current_info", "init_distributed", "shard_model"]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current_info() -> DistributedInfo:
    """The rank and world size of an initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistributedInfo()


def init_distributed(device: str = "auto") -> DistributedInfo:
    """Join the process group that ``torchrun`` describes in the environment, once per process.

    Args:
        device: the run's ``train.device``; ``nccl`` is used when it resolves to CUDA, ``gloo`` otherwise.

    Returns:
        This process's :class:`DistributedInfo` (single-process when ``WORLD_SIZE`` is unset or 1).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return current_info()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current_info()


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Apply FSDP2's ``fully_shard`` to each Transformer block, then to the root (embeddings, head, final norm).

    Sharding block by block lets each block's full weights exist only while that block runs. The module is
    changed in place (its parameters become sharded ``DTensor``s) and returned.
    """
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model


def shutdown_distributed(*, clean: bool) -> None:
    """Leave the process group. After a clean run every process waits for the others first: a process that
    tears gloo down while a peer is still in a collective (rank 0 writing the last checkpoint, say) can abort
    with "terminate called without an active exception". After an error there is no barrier, since the peers
    may never reach it."""
    if not dist.is_initialized():
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()
