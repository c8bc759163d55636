"""Functions run by each process of the 2-process gloo tests (importable by ``torch.multiprocessing.spawn``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch


def check_collectives(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Call every helper of rewardmix.train.distributed on rank-dependent inputs; save what each rank got."""
    from rewardmix.train import distributed as dist

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        accelerator = SimpleNamespace(num_processes=world, process_index=rank, device=torch.device("cpu"))
        # rank 0: 2 rows of width 3; rank 1: 1 row of width 5
        ids = torch.arange(6).view(2, 3) + 1 if rank == 0 else torch.tensor([[7, 8, 9, 10, 11]])
        mask = torch.ones_like(ids, dtype=torch.bool)
        params = [torch.nn.Parameter(torch.full((2,), float(rank))), torch.nn.Parameter(torch.zeros(3))]
        params[0].grad = torch.full((2,), float(rank + 1))  # rank 0: 1, rank 1: 2 -> sum 3
        if rank == 1:
            params[1].grad = torch.ones(3)  # only rank 1 has a gradient here -> 0 + 1
        unused = torch.nn.Parameter(torch.zeros(1))  # no gradient anywhere -> stays None
        dist.all_reduce_gradients(accelerator, [*params, unused])
        dist.broadcast_parameters(accelerator, params)
        result = {
            "right": dist.gather_rows(accelerator, ids, pad_value=-1),
            "left": dist.gather_rows(accelerator, ids, pad_value=-1, side="left"),
            "mask": dist.gather_rows(accelerator, mask, pad_value=False),
            "vector": dist.gather_rows(accelerator, ids[:, 0].float()),
            "objects": dist.gather_objects(accelerator, [f"text{rank}"] * (2 - rank)),
            "any_one": dist.any_process(accelerator, rank == 1),
            "any_none": dist.any_process(accelerator, False),
            "grad0": params[0].grad,
            "grad1": params[1].grad,
            "unused_grad_is_none": unused.grad is None,
            "param0": params[0].detach().clone(),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()
