"""Distributed data parallel under torchrun: the process's rank/world/device, the relaunch of a
stage as ``nproc`` workers, and one all-reduce of the LoRA gradients per step."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from policytune.core.progress import get_logger

log = get_logger("train")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Dist(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


def relaunch_under_torchrun(nproc: int, argv: list[str], module: str) -> int:
    """Run the stage ``module`` (``python -m`` name, e.g. ``stages.train``) again as ``nproc``
    torchrun workers on this node; returns their exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={nproc}", "-m", module, *argv]
    log.info("train.nproc=%d: relaunching under torchrun: %s", nproc, " ".join(cmd[1:]))
    return subprocess.call(cmd)


def allreduce_grads(params: list[torch.nn.Parameter], extra: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum the LoRA grads (and ``extra``) over ranks in one all-reduce; returns summed extra."""
    if dist.world == 1:
        return extra
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra.reshape(-1).float().to(grads[0].device)])
    dist.all_reduce_(flat)
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[off:off + n].view_as(g).to(g.dtype)
        off += n
    return flat[off:]
