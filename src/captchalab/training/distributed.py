"""Device choice and optional multi-process (torchrun) setup."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from captchalab.errors import CaptchalabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CaptchalabError("--device cuda was asked for but no CUDA GPU is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CaptchalabError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def setup(device: str = "auto") -> Context:
    """One process, or one of several started by ``torchrun`` (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", rank, world_size, chosen)
    return Context(chosen, rank, world_size)


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """Rank 0's decision, shared with every rank (keeps early stopping in step)."""
    if ctx.world_size == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
