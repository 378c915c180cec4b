"""torchrun's environment for DistributedDataParallel training (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os

import torch


class Distributed:
    """torchrun's environment: rank, world size, and the process group (gloo on CPU)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def broadcast_flag(self, value: bool) -> bool:
        if not self.enabled:
            return value
        import torch.distributed as dist

        flag = torch.tensor([1 if value else 0])
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def broadcast_int(self, value: int) -> int:
        if not self.enabled:
            return value
        import torch.distributed as dist

        number = torch.tensor([value])
        dist.broadcast(number, 0)
        return int(number.item())

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()
