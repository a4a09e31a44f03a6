"""torch.distributed under torchrun: one process per GPU (gloo on CPU), nothing home-made; and
the one check of a device name that every command makes."""
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger("mage_fast")
DEVICES = "cpu, cuda or cuda:N"


def check_device(name: Optional[str]) -> str:
    """The device a run asks for: `name` if it is cpu, cuda or cuda:N and this machine has it;
    None: cuda if available, else cpu. Anything else is a ValueError in one line."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if not match:
        raise ValueError(f"device must be {DEVICES}, got {name!r}")
    if name != "cpu":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} asked for, but this torch sees no CUDA device (torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda or 'not built in'}): use cpu")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise ValueError(f"{name} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return name


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def min_int(self, value: int) -> int:
        """The smallest of each rank's value (e.g. a batch size every rank can run)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())


def init(device: Optional[str] = None) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), pick this rank's device (see
    check_device). Under torchrun each process takes the GPU of its LOCAL_RANK, cuda:N or not
    (a log line says so where that differs from N); alone, cuda:N is GPU N."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = check_device(device)
    if device.startswith("cuda"):
        asked = torch.device(device).index
        if "LOCAL_RANK" in os.environ:
            local = int(os.environ["LOCAL_RANK"])
            if asked is not None and asked != local:
                log.warning("device %s: under torchrun each process takes the GPU of its local rank, this one "
                            "cuda:%d", device, local)
        else:
            local = asked or 0
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, dev)


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
