"""Data-parallel training inside one job: process group, SyncBN, launching ranks.

A training rule given N > 1 GPUs runs N ranks of DDP inside its one job (method.md 6.6: the
authors ran RITC on 2 GPUs). :func:`run_ranks` starts them:

* launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment): this
  process is one rank; it joins the group torchrun set up;
* otherwise, with ``world_size > 1``: the ranks are spawned here (``torch.multiprocessing``,
  start method "spawn") with a free local port - what a Snakemake ``script:`` rule does;
* ``world_size == 1``: the function runs in this process, no process group.

Backend: NCCL on CUDA, gloo on CPU (the CPU path exists for tests: 2 gloo ranks on a tiny model
give the same losses and gradients as one process with the global batch).

``nn.SyncBatchNorm`` supports GPUs only; :class:`AllReduceBatchNorm2d` does the same on any device
with autograd-aware all-reduces, and :func:`convert_sync_batchnorm` picks the right one.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this rank stands: its rank, the world size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_device(device: str, local_rank: int) -> str:
    if device.startswith("cuda"):
        return f"cuda:{local_rank}"
    return "cpu"


def _setup_logging(log_file: str | None, rank: int) -> None:
    if log_file is None:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _worker(local_rank: int, fn: Callable[..., Any], world_size: int, device: str, port: int,
            result_file: str, log_file: str | None, args: tuple, kwargs: dict) -> None:
    import torch.distributed as dist

    _setup_logging(log_file, local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dev = _rank_device(device, local_rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=local_rank,
                            world_size=world_size)
    try:
        result = fn(DistEnv(local_rank, world_size, local_rank, dev), *args, **kwargs)
        if local_rank == 0:
            with open(result_file, "wb") as fh:
                pickle.dump(result, fh)
    finally:
        dist.destroy_process_group()


def _root_log_file() -> str | None:
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return h.baseFilename
    return None


def run_ranks(fn: Callable[..., Any], world_size: int, device: str, *args: Any,
              log_file: str | None = None, **kwargs: Any) -> Any:
    """Run ``fn(env: DistEnv, *args, **kwargs)`` on ``world_size`` ranks; rank 0's return value.

    ``fn``, ``args`` and ``kwargs`` must be picklable when ranks are spawned. Spawned ranks log
    to ``log_file`` (default: the file of this process's root logging handler), rank 0 at INFO,
    the others at WARNING.
    """
    import torch.distributed as dist

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        # launched by torchrun: this process is one rank
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = _rank_device(device, local)
        if not is_initialized():
            if dev.startswith("cuda"):
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
        return fn(DistEnv(rank, world, local, dev), *args, **kwargs)
    if world_size <= 1:
        return fn(DistEnv(0, 1, 0, _rank_device(device, 0) if device.startswith("cuda")
                          else device), *args, **kwargs)
    if device.startswith("cuda") and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"{world_size} ranks need {world_size} GPUs; torch sees "
                           f"{torch.cuda.device_count()}")
    import torch.multiprocessing as mp

    log_file = log_file if log_file is not None else _root_log_file()
    with tempfile.TemporaryDirectory(prefix="qaclims_ddp_") as tmp:
        result_file = str(Path(tmp) / "result.pkl")
        log.info("starting %d ranks (%s)", world_size, device)
        mp.spawn(_worker, args=(fn, world_size, device, free_port(), result_file, log_file,
                                args, kwargs), nprocs=world_size, join=True)
        with open(result_file, "rb") as fh:
            return pickle.load(fh)


# ---------------------------------------------------------------------------- collectives


def all_reduce_mean(values: Tensor, env: DistEnv) -> Tensor:
    """Mean over ranks (a copy; identity in a single process)."""
    if not env.distributed:
        return values.clone()
    import torch.distributed as dist

    out = values.detach().clone()
    dist.all_reduce(out)
    return out / env.world_size


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not env.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------- sync BN


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of *all* ranks.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; without a process group
    (or in eval mode) it is exactly ``nn.BatchNorm2d``. Mean and variance are reduced in two
    passes (mean, then the centred squares) with ``torch.distributed.nn.functional.all_reduce``,
    whose backward all-reduces the gradients: the result equals BN over the concatenated batch.
    The running variance is updated with the unbiased estimate, as BatchNorm2d does.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_initialized()):
            return super().forward(x)
        import torch.distributed as dist
        from torch.distributed.nn.functional import all_reduce

        if dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        n_local = x.numel() // c
        count = torch.tensor([float(n_local)], device=x.device, dtype=x.dtype)
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else (
                    1.0 / float(self.num_batches_tracked))
                unbiased = var * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        return y


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Every ``nn.BatchNorm2d`` below ``module`` (FixedBatchNorm excluded: it has no batch
    statistics) replaced by ``nn.SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm2d` elsewhere.
    Parameters, buffers and ``requires_grad`` are kept."""
    from qaclims.cam.networks import FixedBatchNorm

    if device.startswith("cuda"):
        # SyncBatchNorm.convert_sync_batchnorm would also convert FixedBatchNorm (a subclass)
        return _convert(module, lambda bn: nn.SyncBatchNorm(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats),
            skip=FixedBatchNorm)
    return _convert(module, lambda bn: AllReduceBatchNorm2d(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats),
        skip=FixedBatchNorm)


def _convert(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module],
             skip: type) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, skip | AllReduceBatchNorm2d):
            new = make(child)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else next(child.buffers()).device)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            _convert(child, make, skip)
    return module


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP around ``model`` for several ranks (parameters broadcast from rank 0), else as is."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.local_rank] if env.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


__all__ = ["AllReduceBatchNorm2d", "DistEnv", "all_reduce_mean", "any_rank", "barrier",
           "convert_sync_batchnorm", "free_port", "run_ranks", "unwrap", "wrap_ddp"]
