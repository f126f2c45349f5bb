"""Detectron2's ``launch``, extended to multi-process CPU training with gloo.

Detectron2 0.6's ``_distributed_worker`` asserts CUDA, uses NCCL and calls
``torch.cuda.set_device``, so ``--num-gpus 2`` cannot run on a CPU-only machine (CI, laptops).
Without CUDA this launcher spawns ``num_gpus_per_machine`` CPU processes that join a gloo
group instead; with CUDA it defers to Detectron2 unchanged.
"""

import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["launch"]

logger = logging.getLogger(__name__)


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    Same arguments as :func:`detectron2.engine.launch`. Without CUDA, ``num_gpus_per_machine``
    is the number of CPU processes per machine, joined with the gloo backend;
    ``dist_url`` may be "auto", "tcp://HOST:PORT" or "file:///path".
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1 or torch.cuda.is_available():
        d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("dist_url must be given explicitly for a multi-machine CPU launch.")
        dist_url = f"tcp://127.0.0.1:{_free_local_port()}"
    logger.info("No CUDA: launching %d CPU processes (gloo, %s).", world_size, dist_url)
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_procs_per_machine + local_rank
    # Each process would otherwise start one thread per core: N processes oversubscribe the
    # machine N times over and run slower than one.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_procs_per_machine))
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    # Detectron2's comm.get_local_rank() / get_local_size() read this group, which its own
    # launcher creates; every process must take part in creating every group.
    assert comm._LOCAL_PROCESS_GROUP is None
    for i in range(world_size // num_procs_per_machine):
        ranks = list(range(i * num_procs_per_machine, (i + 1) * num_procs_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
