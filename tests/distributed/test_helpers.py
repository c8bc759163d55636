"""rewardmix.train.distributed's collectives in 2 real gloo processes, and its one-process identities."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from rewardmix.train import distributed as dist
from tests.distributed.workers import check_collectives


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of 2 gloo processes got back from every helper (spawned once for the module)."""
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(check_collectives, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_gather_rows_pads_to_the_widest_and_keeps_process_order(two_ranks):
    right = torch.tensor([[1, 2, 3, -1, -1], [4, 5, 6, -1, -1], [7, 8, 9, 10, 11]])
    left = torch.tensor([[-1, -1, 1, 2, 3], [-1, -1, 4, 5, 6], [7, 8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for got in two_ranks:  # every process gets the same whole batch
        assert torch.equal(got["right"], right)
        assert torch.equal(got["left"], left)
        assert got["mask"].dtype == torch.bool and torch.equal(got["mask"], mask)
        assert torch.equal(got["vector"], torch.tensor([1.0, 4.0, 7.0]))
        assert got["objects"] == ["text0", "text0", "text1"]


def test_gradients_are_summed_and_parameters_start_equal(two_ranks):
    for got in two_ranks:
        assert torch.equal(got["grad0"], torch.full((2,), 3.0))  # 1 + 2
        assert torch.equal(got["grad1"], torch.ones(3))  # missing on rank 0 counts as zeros
        assert got["unused_grad_is_none"]  # no gradient on any process: the optimizer skips it
        assert torch.equal(got["param0"], torch.zeros(2))  # rank 0's values everywhere
        assert got["any_one"] is True and got["any_none"] is False


def test_one_process_returns_its_inputs_untouched():
    one = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    x = torch.arange(6).view(2, 3)
    assert dist.gather_rows(one, x) is x
    assert dist.gather_objects(one, ["a"]) == ["a"]
    assert dist.any_process(one, True) is True
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 5.0)
    dist.all_reduce_gradients(one, [p])
    assert torch.equal(p.grad, torch.full((2,), 5.0))


def test_only_fsdp_and_deepspeed_count_as_sharded_and_lockstep_is_the_identity_otherwise():
    """Accelerate's DistributedType is a str enum: the check must compare values, not ``str()`` (which gives
    ``DistributedType.FSDP``: the first FSDP runs silently took the unsharded path that way)."""
    from accelerate.utils import DistributedType

    from rewardmix.train import sharded

    for kind in DistributedType:
        accelerator = SimpleNamespace(distributed_type=kind)
        expected = kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        assert sharded.is_sharded(accelerator) is expected
        assert sharded.is_deepspeed(accelerator) is (kind == DistributedType.DEEPSPEED)
    assert sharded.is_sharded(None) is False
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2)
    assert sharded.lockstep(ddp, 3) == 3  # no collective: processes may run different numbers of passes
    fsdp_alone = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=1)
    assert sharded.lockstep(fsdp_alone, 5) == 5
