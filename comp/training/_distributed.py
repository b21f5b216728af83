"""DistributedDataParallel under ``torchrun``: who this process is, and the few collectives the fold trainer needs.

Every rank runs the same ``train_folds`` call. Rank 0 alone takes fold locks and writes artifacts; the others
follow its decisions, which it broadcasts. Training batches come from a ``DistributedSampler``; validation
rows are split into contiguous shards without padding and gathered back in order, so every validation row is
predicted exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from comp.errors import CompError


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """The group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed_parts(self) -> tuple[Any, ...]:
        """Extra seed parts that give each rank its own augmentation and dropout (none in a single process)."""
        return ("rank", self.rank) if self.enabled else ()

    # -- collectives (no-ops in a single process) ------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into ``module`` on every rank.

        DDP keeps parameters equal, but each rank's last forward updates its own BatchNorm statistics: without
        this, each shard of the validation rows would be predicted by slightly different weights than the ones
        rank 0 saves.
        """
        if self.enabled:
            for tensor in module.state_dict().values():
                torch_dist.broadcast(tensor, src=0)

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of ``idx`` (no padding: shards differ in length by at most one)."""
        return np.array_split(idx, self.world)[self.rank] if self.enabled else idx

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Concatenate every rank's shard of rows back in rank (= original) order."""
        if not self.enabled:
            return rows
        parts = [p for p in self.all_gather(rows) if len(p)]
        return np.concatenate(parts)

    def epoch_stats(self, loss: float, images_per_s: float) -> tuple[float, float]:
        """Mean training loss over ranks and the summed throughput of all ranks."""
        if not self.enabled:
            return loss, images_per_s
        t = torch.tensor([loss, images_per_s], dtype=torch.float64)
        stats = self.all_gather(t)
        return float(np.mean([s[0].item() for s in stats])), float(sum(s[1].item() for s in stats))


SINGLE = Dist()


def rank_device(cfg_device: str, d: Dist) -> str:
    """The device of this rank: its own GPU (cuda:LOCAL_RANK) when CUDA is used, else the CPU."""
    if cfg_device not in ("auto", "cpu", "cuda"):
        raise CompError(
            f"config key 'device' is {cfg_device!r}, but under torchrun / --ddp each process takes the "
            "GPU of its local rank; set device: auto, cuda or cpu"
        )
    if cfg_device == "cpu" or (cfg_device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise CompError("config key 'device' is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    if d.local_rank >= torch.cuda.device_count():
        raise CompError(
            f"local rank {d.local_rank} has no GPU: only {torch.cuda.device_count()} CUDA devices are "
            "visible; start at most that many processes per node"
        )
    return f"cuda:{d.local_rank}"


@contextmanager
def session(d: Dist, device: str) -> Iterator[None]:
    """Join torchrun's process group for the block (NCCL on GPUs, gloo on the CPU), unless already joined."""
    if not d.enabled or torch_dist.is_initialized():
        yield
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch_dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m comp <argv>`` in ``nproc`` processes with torchrun's launcher on this box; its exit code.

    This is what ``torchrun --standalone --nproc-per-node N -m comp ...`` does, called as a function so that a
    failed rank ends in its own one-line error rather than torchrun's report. Each process gets
    ``cores // nproc`` CPU threads unless OMP_NUM_THREADS is set, and imports this same comp.
    """
    import logging
    import sys
    import uuid
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from comp.training._parallel import threads_per_worker

    if nproc < 2:
        raise CompError(f"--ddp must be >= 2 processes, got {nproc}")
    here = str(Path(__file__).resolve().parents[2])
    env = {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(threads_per_worker(nproc)),
        "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    elastic = logging.getLogger("torch.distributed.elastic")
    before, saved = elastic.level, {k: os.environ.get(k) for k in env}
    elastic.setLevel(logging.CRITICAL)  # the ranks print their own errors; the agent's report would repeat them
    os.environ.update(env)  # the launcher hands this process's environment to the ranks
    try:
        elastic_launch(config, sys.executable)("-m", "comp", *argv)
    except ChildFailedError as exc:
        first = exc.get_first_failure()[1]
        code = first.exitcode
        if code < 0:
            logging.getLogger(__name__).error("DDP rank %d was killed by signal %d", first.rank, -code)  # type: ignore[attr-defined]
        return code if code > 0 else 1
    finally:
        elastic.setLevel(before)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return 0
