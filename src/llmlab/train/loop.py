"""`train(run_cfg, run_dir)`: set up, resume, loop over updates, evaluate, record.

All the state lives in one `Run` object passed to small functions: the model (uncompiled, used for
saving), the module the train step calls (wrapped for DDP/FSDP and compiled), the optimizer, the
loader, and the counters. Run directory (DESIGN.md section 2):

    config.toml   resolved config (rewritten on resume, changes logged)
    env.json      versions, device, git commit of the first start
    metrics.jsonl one JSON object a line: training rows (step, loss, ...), eval rows (step, val_loss),
                  events (start, resume, stop, diverged)
    checkpoints/  step-NNNNNNNN.pt + manifest.json (sha256)
    routing/      MoE: the probe batch's top-k experts at each evaluation (router saturation)
    result.json   final val/test figures, tokens/s, parameters
    .lock         held while a process trains here
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from llmlab import checkpoint
from llmlab.config import RunConfig
from llmlab.data.loader import TrainLoader
from llmlab.device import autocast_dtype
from llmlab.environment import run_environment
from llmlab.errors import LLMLabError
from llmlab.files import write_json
from llmlab.model.accounting import count
from llmlab.model.moe_advice import check_compilable, dispatch_advice
from llmlab.runs import ENV_FILE, RESULT_FILE, is_finished, read_result, write_eval_windows
from llmlab.train import distributed
from llmlab.train.distributed import DistInfo, any_rank, broadcast_object, gather_objects
from llmlab.train.evaluate import evaluate_split
from llmlab.train.lock import RunDirBusy, RunLock
from llmlab.train.metrics import MetricsWriter, Progress, StepSeries, Throughput, mfu, peak_flops, peak_memory_mb, routing_stats, truncate_after
from llmlab.train.optim import set_lr
from llmlab.train.record import check_resumable, identity, training_changes, write_config
from llmlab.train.routing_probe import probe_batch, record_routing, truncate_routing
from llmlab.train.schedule import lr_at
from llmlab.train.setup import build_trainable, compile_fn, prepare_data, rng_state, set_rng_state
from llmlab.train.signals import EXIT_DIVERGED, EXIT_OK, EXIT_STOPPED, StopRequest
from llmlab.train.step import EvalFn, StepResult, bind_eval_loss, train_step


class TrainingDiverged(LLMLabError):
    """A non-finite loss or gradient norm; the update was skipped."""

    exit_code = EXIT_DIVERGED


@dataclass
class TrainOutcome:
    status: str
    """completed | stopped (by a signal, after a checkpoint: run again to resume)."""
    step: int
    total_steps: int
    result: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.status == "completed" else EXIT_STOPPED


@dataclass
class Run:
    cfg: RunConfig
    run_dir: Path
    info: DistInfo
    model: nn.Module
    train_module: nn.Module
    eval_fn: EvalFn
    optimizer: torch.optim.Optimizer
    loader: Any
    data_dir: Path
    meta: dict[str, Any]
    amp_dtype: torch.dtype | None
    grad_accum: int
    total_steps: int
    flops_per_token: int
    probe: torch.Tensor | None
    """MoE: the fixed batch whose routing each evaluation records (router saturation); dense: None."""
    step: int = 0
    tokens: int = 0
    saved_step: int = -1
    timed: dict[str, float] = field(default_factory=lambda: {"steps": 0, "seconds": 0.0})
    """Steps and seconds of earlier sessions (warm-up steps excluded), for the overall tokens/s."""
    throughput: Throughput | None = None
    last_rate: float | None = None
    """tokens/s at the last log step (shown by the progress bar between log steps)."""
    writer: MetricsWriter | None = None
    progress: Progress | None = None
    series: StepSeries = field(default_factory=StepSeries)
    """Every update's loss and grad norm since the last log row (saved in checkpoints)."""

    def emit(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(row)


# ---------------------------------------------------------------------------------------------
# Entry point


def train(run_cfg: RunConfig, run_dir: str | Path) -> TrainOutcome:
    """Train (or resume) the run in `run_dir`. Raises LLMLabError subclasses for user-fixable
    problems (TrainingDiverged for a non-finite loss); returns how it ended."""
    run_dir = Path(run_dir)
    info = distributed.init(run_cfg.train.device)
    lock = RunLock(run_dir)
    try:
        _lock_on_main(lock, info)
        run = _build(run_cfg, run_dir, info)
        with StopRequest() as stop:
            return _session(run, stop)
    finally:
        lock.release()
        distributed.shutdown()


def _lock_on_main(lock: RunLock, info: DistInfo) -> None:
    """Rank 0 takes the run-dir lock; every rank learns whether it got it (so all exit together)."""
    error = None
    if info.is_main:
        try:
            lock.acquire()
            removed = checkpoint.clean_stale(lock.path.parent)
            if removed:
                print(f"llmlab: removed unfinished checkpoint files: {', '.join(removed)}", flush=True)
        except RunDirBusy as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise RunDirBusy(error)


def _build(cfg: RunConfig, run_dir: Path, info: DistInfo) -> Run:
    tc = cfg.train
    grad_accum = tc.grad_accum(info.world_size)  # validates tokens_per_update first
    total_steps = tc.total_steps()
    amp = autocast_dtype(tc.dtype, info.device)
    check_compilable(cfg.model.moe, compile=tc.compile, dtype=amp, device=info.device)  # before any data
    advice = dispatch_advice(cfg.model.moe, info.device, compile=tc.compile, dtype=amp)
    if advice and info.is_main:  # which MoE dispatch runs on this device, and where it is slow
        print(f"llmlab: {advice}", flush=True)
    data_dir, meta = prepare_data(cfg.data, info)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 leftovers of autocast
        torch.backends.cudnn.allow_tf32 = True
    parts = build_trainable(cfg, info.device, amp, seed=tc.seed, compile=tc.compile, info=info)
    model = parts.model
    # Updates of tokens_per_update / seq_len windows: the data order does not depend on micro_batch_size.
    loader = TrainLoader(data_dir, tc.seq_len, tc.micro_batch_size, windows_per_update=tc.tokens_per_update // tc.seq_len,
                         seed=tc.seed, rank=info.rank, world_size=info.world_size, vocab_size=cfg.model.vocab_size)
    return Run(
        cfg=cfg, run_dir=run_dir, info=info, model=model, train_module=parts.module,
        eval_fn=compile_fn(bind_eval_loss(model, amp), tc),
        optimizer=parts.optimizer, loader=loader, data_dir=data_dir, meta=meta,
        amp_dtype=amp, grad_accum=grad_accum, total_steps=total_steps,
        flops_per_token=count(cfg.model, seq_len=tc.seq_len)["flops_per_token"],
        probe=probe_batch(data_dir, tc.seq_len, cfg.model.vocab_size) if cfg.model.moe is not None else None,
    )


def _session(run: Run, stop: StopRequest) -> TrainOutcome:
    state = _load_checkpoint(run)
    if state is not None:
        check_resumable(state["identity"], identity(run.cfg.to_dict(), run.meta, run.info.world_size), run.run_dir)
        if state["step"] >= run.total_steps and is_finished(run.run_dir):
            print(f"llmlab: {run.run_dir} is complete (step {state['step']}); see {RESULT_FILE}", flush=True)
            return TrainOutcome("completed", state["step"], run.total_steps, read_result(run.run_dir))
    if run.info.is_main:
        # Rows logged after the checkpoint (all of them, when a killed run left none) are about to
        # be replayed: drop them, so metrics.jsonl reads as one uninterrupted run; likewise the
        # routing records, whose last one router saturation takes as the final decision.
        saved = state["step"] if state is not None else -1
        truncate_after(run.run_dir, saved, state.get("metrics_rows") if state is not None else None)
        truncate_routing(run.run_dir, saved)
        run.writer = MetricsWriter(run.run_dir)
    try:
        _start_or_resume(run, state)
        run.progress = Progress(run.total_steps, run.step, enabled=run.info.is_main)
        run.throughput = Throughput(run.cfg.train.tokens_per_update)
        if _loop(run, stop) == "stopped":
            return TrainOutcome("stopped", run.step, run.total_steps)
        return TrainOutcome("completed", run.step, run.total_steps, _finish(run))
    finally:
        if run.progress is not None:
            run.progress.close()
        if run.writer is not None:
            run.writer.close()


# ---------------------------------------------------------------------------------------------
# Start, resume, save


def _start_or_resume(run: Run, state: dict[str, Any] | None) -> None:
    """A fresh start records config and environment; a resume (already checked compatible)
    restores weights, optimizer, loader positions and RNG states, and logs what changed."""
    if state is None:
        torch.manual_seed(run.cfg.train.seed + run.info.rank)  # dropout stream, distinct per rank
        if run.info.is_main:
            write_config(run.run_dir, run.cfg.to_dict())
            write_json(run.run_dir / ENV_FILE, run_environment(run.info.device, _dtype(run), run.info.world_size))
            run.emit({"event": "start", "step": 0, "total_steps": run.total_steps, "time": time.time()})
        return
    distributed.load_full_state(run.model, run.optimizer, state["model"], state["optimizer"])
    run.loader.load_state_dict(state["loaders"][run.info.rank])
    set_rng_state(state["rng"][run.info.rank], run.info.device)
    run.step, run.tokens, run.saved_step, run.timed = state["step"], state["tokens"], state["step"], state["timed"]
    run.series.load_state_dict(state.get("series"), run.info.device)
    if run.info.is_main:
        changes = training_changes(state["config"], run.cfg.to_dict())
        write_config(run.run_dir, run.cfg.to_dict())
        run.emit({"event": "resume", "step": run.step, "changes": changes, "time": time.time(),
                  "env": run_environment(run.info.device, _dtype(run), run.info.world_size)})
        print(f"llmlab: resuming {run.run_dir} at step {run.step}"
              + (f"; changed: {changes}" if changes else ""), flush=True)


def _dtype(run: Run) -> torch.dtype:
    return run.amp_dtype or torch.float32


def _load_checkpoint(run: Run) -> dict[str, Any] | None:
    """Rank 0 finds the newest checkpoint that verifies; every rank then loads that one."""
    found = checkpoint.load_latest(run.run_dir) if run.info.is_main else None
    name = broadcast_object(found[0].file if found else None)
    if name is None:
        return None
    if found is not None:
        return found[1]
    return torch.load(checkpoint.ckpt_dir(run.run_dir) / name, map_location="cpu", weights_only=True)


def _save(run: Run) -> None:
    model_sd, optim_sd = distributed.full_state(run.model, run.optimizer)  # a collective under FSDP
    loaders = gather_objects(run.loader.state_dict())
    rngs = gather_objects(rng_state(run.info.device))
    if run.info.is_main:
        state = {
            "step": run.step, "tokens": run.tokens, "model": model_sd, "optimizer": optim_sd,
            "loaders": loaders, "rng": rngs, "config": run.cfg.to_dict(),
            "identity": identity(run.cfg.to_dict(), run.meta, run.info.world_size),
            "timed": _timed(run), "metrics_rows": run.writer.rows, "series": run.series.state_dict(),
        }
        checkpoint.save(run.run_dir, run.step, state, keep=run.cfg.train.keep_checkpoints,
                        pinned=run.cfg.train.ckpt_at)
    distributed.barrier()
    run.saved_step = run.step


def _timed(run: Run) -> dict[str, float]:
    tput = run.throughput
    return {"steps": run.timed["steps"] + tput.total_steps, "seconds": run.timed["seconds"] + tput.total_s}


# ---------------------------------------------------------------------------------------------
# The loop


def _loop(run: Run, stop: StopRequest) -> str:
    tc, throughput = run.cfg.train, run.throughput
    while run.step < run.total_steps:
        lr = lr_at(run.step, tc, run.total_steps)
        set_lr(run.optimizer, lr)
        result = train_step(run.train_module, run.model, run.optimizer, run.loader.next_batch,
                            run.grad_accum, tc.grad_clip, run.info.device)
        if not result.applied:
            _diverged(run, result)
        run.step += 1
        run.tokens += tc.tokens_per_update
        throughput.step_done()
        _log_step(run, result, lr, throughput)
        if _due(run.step, tc.eval_interval) and run.step < run.total_steps:
            _log_eval(run)
            throughput.restart_clock()
        stopping = any_rank(stop.requested, run.info.device)
        due = _due(run.step, tc.ckpt_interval) or run.step in tc.ckpt_at
        if stopping or (due and run.step < run.total_steps):
            _save(run)
            throughput.restart_clock()
        if stopping:
            run.emit({"event": "stop", "step": run.step, "signal": stop.signum, "time": time.time()})
            run.progress.message(f"llmlab: stopped at step {run.step} (checkpoint saved); run again to resume")
            return "stopped"
    return "completed"


def _due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _diverged(run: Run, result: StepResult) -> NoReturn:
    what = "loss" if not math.isfinite(result.loss) else "gradient norm"
    last = checkpoint.read_manifest(checkpoint.ckpt_dir(run.run_dir))
    kept = f"the last good checkpoint is step {last[-1].step}" if last else "no checkpoint was written yet"
    message = (
        f"non-finite {what} at step {run.step + 1} (loss {result.loss}, grad norm {result.grad_norm}): "
        f"stopped before the update, weights unchanged; {kept}. Try a lower train.lr, a longer "
        "train.warmup or train.grad_clip, or check the data"
    )
    run.emit({"event": "diverged", "step": run.step + 1, "message": message, "time": time.time()})
    raise TrainingDiverged(message)


def _log_step(run: Run, result: StepResult, lr: float, throughput: Throughput) -> None:
    tc = run.cfg.train
    log_now = run.step % tc.log_interval == 0 or run.step == run.total_steps
    run.series.append(result.loss, result.grad_norm, result.moe_stats)
    if log_now:
        rate = throughput.interval_rate()
        row = {"step": run.step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm, **run.series.take(),
               "tokens": run.tokens, "tokens_per_s": rate,
               "mfu": mfu(run.flops_per_token, rate or 0.0, _peak(run), run.info.world_size),
               "mem_mb": round(peak_memory_mb(run.info.device), 1), "time": time.time()}
        if throughput.first_step_s is not None and throughput.total_steps < tc.log_interval:
            row["first_step_s"] = throughput.first_step_s  # compile + warm-up, excluded from tokens/s
        if result.moe_stats:
            row["aux_loss"] = result.aux_loss
            row.update(routing_stats(run.series.take_routing()))  # means over the interval, not this step
        run.emit(row)
        run.last_rate = rate
    run.progress.update(run.step, run.tokens, result.loss, run.last_rate, log_line=log_now)


def _peak(run: Run) -> float | None:
    """MFU is quoted against the bf16 peak, so only for bf16 runs on a known GPU."""
    return peak_flops(run.info.device) if run.amp_dtype == torch.bfloat16 else None


# ---------------------------------------------------------------------------------------------
# Evaluation and the end of the run


def _evaluate(run: Run, split: str, max_windows: int | None, keep_windows: bool = False) -> dict[str, Any]:
    return evaluate_split(run.eval_fn, run.model, run.cfg, run.data_dir, run.meta, split, max_windows, run.info.device,
                          keep_windows=keep_windows)


def _log_eval(run: Run) -> dict[str, float]:
    val = _evaluate(run, "val", run.cfg.train.eval_windows)
    if run.probe is not None:  # MoE: the probe's top-k experts at this step, for router saturation (OLMoE)
        record_routing(run.model, run.probe, run.run_dir, run.step, run.amp_dtype, write=run.info.is_main)
    run.emit({"step": run.step, "val_loss": val["loss"], "val_ppl": val["ppl"], "time": time.time()})
    run.progress.message(f"step {run.step}: val_loss {val['loss']:.4f} (ppl {val['ppl']:.2f})")
    return val


def _finish(run: Run) -> dict[str, Any]:
    """Final checkpoint, validation and test figures, result.json."""
    if run.saved_step != run.step:
        _save(run)
    val = _log_eval(run)
    test = _evaluate(run, "test", None, keep_windows=True)
    windows = test.pop("windows")  # per-window test losses: the report's bootstrap over test windows
    timed = _timed(run)
    rate = timed["steps"] * run.cfg.train.tokens_per_update / timed["seconds"] if timed["seconds"] else None
    result = {
        "status": "completed", "step": run.step, "tokens": run.tokens,
        **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()},
        "tokens_per_s": rate, "mfu": mfu(run.flops_per_token, rate or 0.0, _peak(run), run.info.world_size),
        "train_time_s": timed["seconds"], "world_size": run.info.world_size, "device": str(run.info.device),
        "dtype": str(_dtype(run)).removeprefix("torch."), "params": count(run.cfg.model, seq_len=run.cfg.train.seq_len),
    }
    if run.info.is_main:
        write_eval_windows(run.run_dir, "test", windows)
        write_json(run.run_dir / RESULT_FILE, result)
        run.progress.message(
            f"done: val_loss {val['loss']:.4f} (ppl {val['ppl']:.2f}), test_loss {test['loss']:.4f} "
            f"(ppl {test['ppl']:.2f})" + (f", {rate:,.0f} tokens/s" if rate else "")
        )
    return result
