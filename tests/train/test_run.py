"""rewardmix.train.run: the run scaffold the training stages share (start, resume, steps, checkpoints, end)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rewardmix.rundir import read_jsonl
from rewardmix.train.checkpoint import list_checkpoints, load_checkpoint
from rewardmix.train.config import LoggingConfig, OptimConfig
from rewardmix.train.loop import NonFiniteGuard
from rewardmix.train.run import (
    check_plan,
    every,
    finish,
    make_adamw,
    optimizer_step,
    resume,
    save_step,
    start_run,
)


@dataclass
class Settings:
    """The smallest stage config: the three top-level fields and a logging section."""

    output_dir: str = "runs/x"
    seed: int = 0
    cpu: bool = True
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def start(tmp_path: Path, **logging_fields) -> tuple:
    cfg = Settings(output_dir=str(tmp_path / "run"), seed=3, logging=LoggingConfig(**logging_fields))
    return start_run(cfg, stage="test", mixed_precision="no"), cfg


def write_rows(path: Path, steps: range) -> None:
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in steps))


def model_and_optimizer(total_steps: int = 10):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer, scheduler = make_adamw(model, OptimConfig(warmup_ratio=0.0), total_steps=total_steps)
    return model, optimizer, scheduler


# ---------------------------------------------------------------------------------------------------------
# start_run


def test_start_run_writes_the_run_directory_and_seeds(tmp_path):
    ctx, cfg = start(tmp_path)
    first = torch.rand(3)
    assert ctx.out == tmp_path / "run" and ctx.is_main and ctx.accelerator.num_processes == 1
    config = (ctx.out / "config.yaml").read_text()
    assert config.startswith("stage: test\n") and f"output_dir: {ctx.out}" in config
    assert json.loads((ctx.out / "run_info.json").read_text())["stage"] == "test"
    start_run(cfg, stage="test", mixed_precision="no")
    assert torch.equal(torch.rand(3), first)  # seeded again with cfg.seed


# ---------------------------------------------------------------------------------------------------------
# resume


def test_a_fresh_start_has_no_checkpoint_and_starts_the_logs_afresh(tmp_path):
    ctx, cfg = start(tmp_path)
    write_rows(ctx.out / "metrics.jsonl", range(5))  # left over from a run whose checkpoints were deleted
    resumed = resume(ctx, {"data": "a"}, logging=cfg.logging, config={})
    assert resumed.checkpoint is None and resumed.step == 0
    assert read_jsonl(ctx.out / "metrics.jsonl") == []
    resumed.metrics.log(1, {"loss": 1.0})
    resumed.samples.log(1, [{"prompt": "p"}])
    assert read_jsonl(ctx.out / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]
    assert read_jsonl(ctx.out / "samples.jsonl") == [{"step": 1, "prompt": "p"}]


@pytest.mark.parametrize(("num_samples", "samples"), [(0, True), (4, False)])
def test_the_sample_table_stays_closed_without_samples(tmp_path, num_samples, samples):
    ctx, cfg = start(tmp_path, num_samples=num_samples)
    resumed = resume(ctx, {}, logging=cfg.logging, config={}, samples=samples)
    resumed.samples.log(1, [{"prompt": "p"}])
    assert not (ctx.out / "samples.jsonl").exists()


def test_resume_cuts_the_logs_back_to_the_checkpoint_and_restores_the_random_state(tmp_path):
    ctx, cfg = start(tmp_path)
    plan = {"data": "a", "steps": 6}
    model, optimizer, scheduler = model_and_optimizer()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    save_step(
        ctx, 2, trainable_state=state, optimizer=optimizer, scheduler=scheduler, extra={"plan": plan}, keep=2
    )
    after_save = torch.rand(4)  # what the run drew next
    torch.rand(100)  # ... and the kill came later
    write_rows(ctx.out / "metrics.jsonl", range(5))
    write_rows(ctx.out / "samples.jsonl", range(1, 5))

    resumed = resume(ctx, plan, logging=cfg.logging, config={})
    assert resumed.checkpoint is not None and resumed.step == 2
    assert torch.equal(torch.rand(4), after_save)
    # steps 3 and 4 are redone: their rows go, and the new ones are appended after step 2
    assert [r["step"] for r in read_jsonl(ctx.out / "metrics.jsonl")] == [0, 1, 2]
    assert [r["step"] for r in read_jsonl(ctx.out / "samples.jsonl")] == [1, 2]
    resumed.metrics.log(3, {"x": 3})
    assert [r["step"] for r in read_jsonl(ctx.out / "metrics.jsonl")] == [0, 1, 2, 3]


def test_resume_prunes_checkpoints_a_kill_left_between_save_and_prune(tmp_path):
    ctx, cfg = start(tmp_path, keep_checkpoints=2)
    plan = {"data": "a"}
    for step in (4, 8, 12):  # saved with a larger keep: as if the kill came before the last pruning
        save_step(ctx, step, trainable_state={"w": torch.ones(2)}, optimizer=None, scheduler=None,
                  extra={"plan": plan}, keep=5)  # fmt: skip
    newer = ctx.out / "checkpoints" / "step-00000016"
    newer.mkdir()  # damaged (no manifest): not loaded, and not pruned either
    resumed = resume(ctx, plan, logging=cfg.logging, config={})
    assert resumed.step == 12
    assert [p.name for p in list_checkpoints(ctx.out)] == ["step-00000008", "step-00000012", "step-00000016"]


def test_a_checkpoint_of_another_plan_is_refused_and_the_logs_are_left_alone(tmp_path):
    ctx, cfg = start(tmp_path)
    save_step(
        ctx,
        2,
        trainable_state={"w": torch.ones(2)},
        optimizer=None,
        scheduler=None,
        extra={"plan": {"data": "a"}},
        keep=2,
    )
    write_rows(ctx.out / "metrics.jsonl", range(5))
    expected = (
        rf"^{ctx.out / 'checkpoints' / 'step-00000002'} was written for another data/batch plan "
        r"\(\{'data': 'a'\}\) than this config's \(\{'data': 'b'\}\); use a new output_dir or delete "
        rf"{ctx.out / 'checkpoints'}$"
    )
    with pytest.raises(ValueError, match=expected):
        resume(ctx, {"data": "b"}, logging=cfg.logging, config={}, plan_name="data/batch plan")
    assert len(read_jsonl(ctx.out / "metrics.jsonl")) == 5


def test_check_plan_names_the_plan_as_asked(tmp_path):
    ctx, _ = start(tmp_path)
    save_step(
        ctx,
        1,
        trainable_state={"w": torch.ones(2)},
        optimizer=None,
        scheduler=None,
        extra={"plan": [1]},
        keep=1,
    )
    checkpoint = load_checkpoint(list_checkpoints(ctx.out)[-1])
    check_plan(checkpoint, [1], out=ctx.out)  # the same plan passes
    with pytest.raises(
        ValueError, match=r"was written for another plan \(\[1\]\) than this config's \(\[2\]\)"
    ):
        check_plan(checkpoint, [2], out=ctx.out)


# ---------------------------------------------------------------------------------------------------------
# every, make_adamw, optimizer_step


@pytest.mark.parametrize(
    ("n", "steps"),
    [(1, [1, 2, 3, 4, 5, 6, 7]), (3, [3, 6]), (0, []), (-2, []), (10, [])],
)
def test_every_falls_on_multiples_of_n_counting_from_one(n, steps):
    assert [s for s in range(1, 8) if every(n, s)] == steps


def test_make_adamw_decays_matrices_only_and_follows_the_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].bias.requires_grad_(False)  # frozen: not trained
    optim = OptimConfig(
        learning_rate=0.1,
        weight_decay=0.01,
        adam_betas=(0.8, 0.9),
        adam_epsilon=1e-6,
        warmup_ratio=0.25,
        min_lr_ratio=0.5,
    )
    optimizer, scheduler = make_adamw(model, optim, total_steps=8)
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.01
    assert [p.shape for p in no_decay["params"]] == [(3,), (3,)] and no_decay["weight_decay"] == 0.0
    assert (decay["betas"], decay["eps"]) == ((0.8, 0.9), 1e-6)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up over round(0.25 * 8) = 2 steps (1/2, 2/2), then cosine from 0.1 down to the floor 0.05
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] == pytest.approx(0.05)


def test_make_adamw_groups_a_zero3_partition_by_the_shape_of_its_weight():
    """Under ZeRO-3 with zero3_init_flag a weight is an empty 1-D partition with its real shape in ds_shape."""
    matrix, vector = torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(0))
    matrix.ds_shape, vector.ds_shape = torch.Size([3, 4]), torch.Size([3])
    optimizer, _ = make_adamw([matrix, vector], OptimConfig(weight_decay=0.01), total_steps=4)
    decay, no_decay = optimizer.param_groups
    assert decay["params"] == [matrix] and decay["weight_decay"] == 0.01
    assert no_decay["params"] == [vector] and no_decay["weight_decay"] == 0.0


def test_make_adamw_takes_parameters_in_order_and_an_own_learning_rate():
    vector, matrix = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))
    optimizer, scheduler = make_adamw(
        [vector, matrix], OptimConfig(warmup_ratio=0.0), total_steps=0, learning_rate=3e-3
    )
    assert len(optimizer.param_groups) == 2  # an empty group would be left out
    assert optimizer.param_groups[0]["params"] == [matrix] and optimizer.param_groups[1]["params"] == [vector]
    assert optimizer.param_groups[0]["lr"] == 3e-3
    assert scheduler.lr_lambdas[0].total_steps == 1  # 0 steps: a schedule of one step, not an error


def test_make_adamw_leaves_out_an_empty_group():
    optimizer, _ = make_adamw([torch.nn.Parameter(torch.zeros(2))], OptimConfig(), total_steps=4)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.0


def backward(model: torch.nn.Module, scale: float = 1.0) -> None:
    (model(torch.ones(2, 4)).sum() * scale).backward()


def test_optimizer_step_clips_updates_and_advances_the_schedule():
    model, optimizer, scheduler = model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    backward(model, scale=100.0)
    expected_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    norm = optimizer_step(
        optimizer,
        scheduler,
        model.parameters(),
        max_grad_norm=1.0,
        accelerator=None,
        guard=NonFiniteGuard(),
        step=1,
    )
    assert norm == pytest.approx(expected_norm, rel=1e-5) and norm > 1.0
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert scheduler.last_epoch == 1


def test_a_non_finite_step_leaves_the_weights_and_still_advances_the_schedule(caplog):
    model, optimizer, scheduler = model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    guard = NonFiniteGuard()
    backward(model, scale=float("nan"))
    with caplog.at_level(logging.WARNING):
        norm = optimizer_step(
            optimizer,
            scheduler,
            list(model.parameters()),
            max_grad_norm=1.0,
            accelerator=None,
            guard=guard,
            step=7,
            losses={"loss/train": math.nan},
            named_parameters=model.named_parameters,
        )
    assert math.isnan(norm) and guard.skipped == 1
    assert "step 7: gradient norm is nan, skipping the optimizer step" in caplog.text
    assert "0.weight (nan)" in caplog.text
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters()) and scheduler.last_epoch == 1


def test_skip_leaves_the_weights_without_asking_the_guard():
    model, optimizer, scheduler = model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    guard = NonFiniteGuard()
    backward(model)
    optimizer_step(
        optimizer,
        scheduler,
        model.parameters(),
        max_grad_norm=None,
        accelerator=None,
        guard=guard,
        step=1,
        skip=True,
    )
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert guard.skipped == 0 and guard.consecutive == 0 and scheduler.last_epoch == 1


# ---------------------------------------------------------------------------------------------------------
# save_step, finish


def test_save_step_writes_a_checkpoint_with_the_stage_state_and_prunes(tmp_path):
    ctx, _ = start(tmp_path)
    model, optimizer, scheduler = model_and_optimizer()
    for step in (1, 2, 3):
        save_step(
            ctx,
            step,
            trainable_state={"w": torch.full((2,), float(step))},
            optimizer=optimizer,
            scheduler=scheduler,
            extra={"plan": "p", "phase": step},
            keep=2,
        )
    assert [p.name for p in list_checkpoints(ctx.out)] == ["step-00000002", "step-00000003"]
    checkpoint = load_checkpoint(list_checkpoints(ctx.out)[-1])
    assert checkpoint.extra == {"plan": "p", "phase": 3} and torch.equal(
        checkpoint.trainable_state["w"], 3 * torch.ones(2)
    )
    assert checkpoint.optimizer_state is not None and checkpoint.scheduler_state is not None
    assert checkpoint.rng_state is not None


def test_finish_writes_the_summary(tmp_path):
    ctx, _ = start(tmp_path)
    finish(ctx, {"global_step": 4, "eval_loss": None})
    assert (ctx.out / "summary.json").read_text() == '{\n  "global_step": 4,\n  "eval_loss": null\n}\n'
    finish(ctx, {"score": torch.tensor(0.5)}, json_default=float)
    assert json.loads((ctx.out / "summary.json").read_text()) == {"score": 0.5}


# ---------------------------------------------------------------------------------------------------------
# Metric sinks


@pytest.mark.parametrize(
    ("value", "sinks"), [("wandb", ["wandb"]), (["tensorboard", "wandb"], ["tensorboard", "wandb"])]
)
def test_report_to_takes_one_sink_or_a_list(value, sinks):
    from rewardmix.config import from_dict

    assert from_dict(LoggingConfig, {"report_to": value}).report_to == sinks
    assert LoggingConfig(report_to="tensorboard").report_to == ["tensorboard"]
    with pytest.raises(Exception, match="report_to"):
        from_dict(LoggingConfig, {"report_to": "mlflow"})


def test_report_to_wandb_logs_each_row_and_a_missing_package_names_the_extra(tmp_path, monkeypatch, caplog):
    import sys
    import types

    from rewardmix.train.loop import TrainLogger

    calls: list[tuple[str, object]] = []
    run = types.SimpleNamespace(
        log=lambda row, step: calls.append(("log", (step, row))),
        finish=lambda: calls.append(("finish", None)),
    )
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs["name"])) or run  # a local stand-in: no network
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sinks = LoggingConfig(report_to="wandb").report_to
    logger = TrainLogger(tmp_path / "run", report_to=sinks, config={"seed": 0})
    logger.log(1, {"loss/train": 0.5})
    logger.close()
    assert calls == [("init", "run"), ("log", (1, {"loss/train": 0.5})), ("finish", None)]

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING, logger="rewardmix.train.loop"):
        TrainLogger(tmp_path / "run2", report_to=sinks).close()
    assert "wandb package is not installed" in caplog.text
    assert "pip install 'rewardmix[wandb]'" in caplog.text
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["loss/train"] == 0.5


def test_a_checkpoint_is_not_restored_across_a_change_of_sharding(tmp_path):
    """An FSDP checkpoint (it has shards/) under a data-parallel launch, and the other way round: a clear
    config error before any tensor is touched, not a half-restored run."""
    from types import SimpleNamespace

    from rewardmix.config import ConfigError
    from rewardmix.train.checkpoint import Checkpoint
    from rewardmix.train.run import RunContext, restore_optimizer, restore_weights

    model = torch.nn.Linear(2, 2)
    data_parallel = SimpleNamespace(distributed_type="MULTI_CPU", unwrap_model=lambda m: m)
    fsdp = SimpleNamespace(distributed_type="FSDP", unwrap_model=lambda m: m)
    sharded = Checkpoint(tmp_path / "step-00000002", 2, {}, shards=tmp_path / "step-00000002" / "shards")
    plain = Checkpoint(tmp_path / "step-00000002", 2, {"weight": torch.ones(2, 2), "bias": torch.ones(2)})
    with pytest.raises(ConfigError, match="written by a FSDP run and this launch is data-parallel"):
        restore_weights(RunContext(data_parallel, tmp_path, True), sharded, model)
    with pytest.raises(ConfigError, match="written by a data-parallel run and this launch is FSDP"):
        restore_optimizer(RunContext(fsdp, tmp_path, True), plain, model, None, None)
    restore_weights(RunContext(data_parallel, tmp_path, True), plain, model)
    assert torch.equal(model.weight, torch.ones(2, 2))


def test_a_deepspeed_checkpoint_is_refused_by_fsdp_and_by_another_process_count(tmp_path):
    """DeepSpeed's checkpoint (shards/engine/, one optimizer partition per process) is neither read by an FSDP
    launch nor by a DeepSpeed launch of another size: ZeRO's partitions are per process."""
    from types import SimpleNamespace

    from rewardmix.config import ConfigError
    from rewardmix.train.checkpoint import Checkpoint
    from rewardmix.train.run import RunContext, restore_weights

    shards = tmp_path / "step-00000002" / "shards"
    (shards / "engine").mkdir(parents=True)
    for rank in (0, 1):
        (shards / "engine" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    checkpoint = Checkpoint(tmp_path / "step-00000002", 2, {}, shards=shards)
    model = torch.nn.Linear(2, 2)
    fsdp = SimpleNamespace(distributed_type="FSDP", num_processes=2)
    with pytest.raises(ConfigError, match="written by a DeepSpeed run and this launch is FSDP"):
        restore_weights(RunContext(fsdp, tmp_path, True), checkpoint, model)
    four = SimpleNamespace(distributed_type="DEEPSPEED", num_processes=4)
    with pytest.raises(
        ConfigError, match="DeepSpeed run of 2 processes and this launch has 4.*--num_processes 2"
    ):
        restore_weights(RunContext(four, tmp_path, True), checkpoint, model)
