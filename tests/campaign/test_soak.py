"""A campaign killed at any moment finishes with the records of one left alone (issue 22).

The soak: a tiny campaign (2 arms, dense and MoE; a 2-point LR sweep; 2 seeds; a decode sweep; the
report) runs once undisturbed, then again in another folder as `llmlab campaign` subprocesses
killed with SIGKILL at moments drawn from a fixed seed -- in a training step, right after an
evaluation row, between runs, mid decode sweep, while the report is written -- and restarted
each time until one finishes. Every record is then compared with the undisturbed run's: the
metrics rows (events and wall-clock fields aside), result.json, the final weights and optimizer
state, the MoE routing records, campaign.json, infer.json and the report's tables (timings
aside), and the list of files (nothing half-written left behind).

The kill points are moments of the undisturbed run's timeline (see Sessions below) and fractions
of the time to its next line, drawn from a fixed seed, so a plan lands alike on a fast or a loaded
machine. LLMLAB_SOAK_SEED picks another plan and LLMLAB_SOAK_KILLS another length; a failure
prints both and where each kill fell, to replay it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from test_campaign import mini  # noqa: F401  (the fixture: the mini campaign on a small corpus)

from llmlab.checkpoint import ckpt_dir, load_latest, read_manifest
from llmlab.errors import ConfigError
from llmlab.runs import read_metrics
from llmlab.train.lock import RunLock
from llmlab.train.metrics import WALL_CLOCK_FIELDS
from llmlab.train.routing_probe import read_routing

SEED = int(os.environ.get("LLMLAB_SOAK_SEED", "22"))
KILLS = int(os.environ.get("LLMLAB_SOAK_KILLS", "6"))

PHASES = {  # phase -> (stage, the line that marks a moment of it; what it matches names the moment)
    "between runs": (0, re.compile(r"== (sweep|seed) \[\d+/\d+\]")),  # a run's header: before its lock, or a skip
    "training step": (0, re.compile(r"step \d+/\d+ ")),
    "after an evaluation": (0, re.compile(r"step \d+: val_loss")),  # before the next checkpoint, or result.json
    "decode sweep": (1, re.compile(r"== decode sweep: \S+| +decode: context \d+, batch \d+")),
    "report": (2, re.compile(r"== report")),
}
RESULT_TIMINGS = ("tokens_per_s", "mfu", "train_time_s")
INFER_TIMINGS = ("prefill_s", "decode_s", "decode_tokens_per_s", "tokens_per_s", "compile_s",
                 "tokens_per_s_kv_cache", "tokens_per_s_no_cache", "kv_cache_speedup")
REPORT_TIMINGS = ("train_tokens_per_s", "decode_tokens_per_s_cache", "decode_tokens_per_s_no_cache", "kv_cache_speedup")
TIMED_SECTIONS = ("Speed", "Decode sweep", "Record")
"""report.md sections made of timings (or of dates); in Findings, the KV-cache speed line."""


def soak_campaign(mini: str) -> str:
    """The mini campaign with seeds, a sweep, evaluations between checkpoints and an MoE arm."""
    text = mini.replace('name = "mini"', 'name = "soak"\ntolerance = 0.05\nseeds = [0, 1]\n'
                                          '[sweep]\nlr = [1e-3, 3e-3]\nfraction = 0.5', 1)
    for old, new in (("max_steps = 3", "max_steps = 8"), ("eval_interval = 0", "eval_interval = 2"),
                     ("ckpt_interval = 0", "ckpt_interval = 3"), ("contexts = [16, 48]", "contexts = [16]")):
        assert old in text, old
        text = text.replace(old, new)
    arm = 'name = "mqa"\n[variant.model]\nn_heads = 3\nn_kv_heads = 1\n'
    assert arm in text
    return text.replace(arm, 'name = "moe"\n[variant.model]\nn_heads = 3\nn_kv_heads = 1\n[variant.model.moe]\n'
                             'n_experts = 4\ntop_k = 2\nd_ff_expert = 32\ndispatch = "loop"\n')


# ---------------------------------------------------------------------------------------------
# Sessions
#
# A moment is a line of the undisturbed run's output, named by its run's header and its own start
# ("== seed [2/4]", "step 5/8"); a kill is sent that fraction of the undisturbed gap to the next
# line after a session prints that moment. The plan's moments go forward in the campaign, and a
# session that resumes past one skips it, so every session gets further than the last.


@dataclass(frozen=True)
class Moment:
    name: tuple[str, str]
    """(the run's or phase's header, the line's own part)."""
    phase: str
    gap: float
    """Seconds to the next line in the undisturbed run."""


@dataclass(frozen=True)
class Kill:
    at: int
    """Index of the moment in the undisturbed timeline."""
    fraction: float


def moments(lines: list[tuple[float, str]]) -> list[Moment]:
    """The undisturbed run's timeline: every line that names a moment, in order."""
    found, header = [], ""
    for (t, line), (t_next, _) in zip(lines, lines[1:] + [(lines[-1][0], "")]):
        named = moment_of(line, header)
        if named is not None:
            header = named[0]
            found.append(Moment(named, _phase(line), t_next - t))
    return found


def moment_of(line: str, header: str) -> tuple[str, str] | None:
    phase = _phase(line)
    if phase is None:
        return None
    match = PHASES[phase][1].match(line).group(0).strip()
    return (match, "") if match.startswith("==") else (header, match)


def _phase(line: str) -> str | None:
    return next((name for name, (_, pattern) in PHASES.items() if pattern.match(line)), None)


def kill_plan(seed: int, kills: int, timeline: list[Moment]) -> list[Kill]:
    """`kills` moments in timeline order, drawn from `seed`: at least one in five in the decode sweep
    and in the report, one right after a run's final evaluation (before its result.json: where a
    resumed run used to log that evaluation twice), the others anywhere in the training stage."""
    rng = random.Random(seed)
    stage = [PHASES[m.phase][0] for m in timeline]
    final = [i for i, m in enumerate(timeline)  # a run's last evaluation: the next moment is another run's
             if m.phase == "after an evaluation" and timeline[i + 1].name[0] != m.name[0]]
    later = max(1, kills // 5)
    picked = [rng.choice(final)]
    picked += rng.sample([i for i in range(len(timeline)) if stage[i] == 0 and i not in picked], kills - 2 * later - 1)
    picked += rng.sample([i for i in range(len(timeline)) if stage[i] == 1], later)
    picked += rng.choices([i for i in range(len(timeline)) if stage[i] == 2], k=later)
    # The report is one moment (no line until it is written) that a loaded machine stretches:
    # its kills fall in the first half of the undisturbed run's, so as not to come after its end.
    return [Kill(i, round(rng.uniform(0.05, 0.5) if stage[i] == 2 else rng.random(), 3)) for i in sorted(picked)]


@dataclass
class Session:
    returncode: int
    lines: list[tuple[float, str]]
    """(seconds since the start, line)."""
    next_kill: int
    """Index in the plan of the first kill not yet sent."""
    seconds: float
    killed_after: Moment | None = None
    """The moment after which this session's kill was sent (it may come too late: returncode 0)."""


def campaign_cmd(toml: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "llmlab", "campaign", str(toml), "--out", str(out), "--memory-gb", "1"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # as tests/train/trainkit.py


def session(toml: Path, out: Path, plan: list[Kill] = (), timeline: list[Moment] = (), at: int = 0,
            on_first_line: Callable[[subprocess.Popen], None] | None = None) -> Session:
    """One `llmlab campaign` process, SIGKILLed at plan[at] (or the first later kill it reaches)."""
    proc = subprocess.Popen(campaign_cmd(toml, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    position = {m.name: i for i, m in enumerate(timeline)}
    t0, lines, header, killed_after = time.monotonic(), [], "", None
    for line in proc.stdout:
        lines.append((time.monotonic() - t0, line.rstrip("\n")))
        if on_first_line is not None and len(lines) == 1:
            on_first_line(proc)
        named = moment_of(line, header)
        if named is None:
            continue
        header = named[0]
        here = position.get(named, -1)
        while killed_after is None and at < len(plan) and plan[at].at < here:
            at += 1  # resumed past it
        if killed_after is None and at < len(plan) and plan[at].at == here:
            killed_after = timeline[here]
            threading.Timer(plan[at].fraction * killed_after.gap, proc.send_signal, [signal.SIGKILL]).start()
            at += 1
    returncode = proc.wait()
    return Session(returncode, lines, at, time.monotonic() - t0, killed_after)


def soak(toml: Path, out: Path, plan: list[Kill], timeline: list[Moment],
         on_first_line: Callable[[subprocess.Popen], None]) -> list[Session]:
    """Sessions until one finishes with no kill left in the plan (a finished campaign run again
    writes its report again: the report's kills still have a moment to fall in; one that came
    after the report's end is tried again at half its delay, in `plan`). The first session calls
    on_first_line(its process) at its first line."""
    sessions, at = [], 0
    while True:
        s = session(toml, out, plan, timeline, at, None if sessions else on_first_line)
        sessions.append(s)
        assert s.returncode in (0, -signal.SIGKILL), "\n".join(line for _, line in s.lines[-20:])
        at = s.next_kill
        if s.returncode == 0 and s.killed_after is not None and PHASES[s.killed_after.phase][0] == 2:
            at -= 1  # the report ended before its kill (a faster machine than the undisturbed run's): again, sooner
            plan[at] = Kill(plan[at].at, round(plan[at].fraction / 2, 3))
        elif s.returncode == 0 and at == len(plan):
            return sessions
        assert len(sessions) <= len(plan) + 5, "the campaign makes no progress between kills"


# ---------------------------------------------------------------------------------------------
# Records


def differences(ref: Path, got: Path) -> list[str]:
    """Every way the soaked folder's records differ from the undisturbed one's (timings aside)."""
    problems = []
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*")  # noqa: E731
                             if p.is_file() and "tb" not in p.relative_to(d).parts)  # TensorBoard's own files
    if files(ref) != files(got):
        problems.append(f"files: only undisturbed {sorted(set(files(ref)) - set(files(got)))}, "
                        f"only soaked {sorted(set(files(got)) - set(files(ref)))}")
    for name in ("campaign.json", "report.csv", "report.md"):
        if _record(ref / name) != _record(got / name):
            problems.append(name)
    for run in sorted(p.parent.relative_to(ref) for p in ref.rglob("fingerprint.json")):
        problems += [f"{run}: {what}" for what in _run_differences(ref / run, got / run)]
    return problems


def _run_differences(ref: Path, got: Path) -> list[str]:
    problems = [name for name in ("fingerprint.json", "config.toml", "result.json", "infer.json", "metrics.jsonl")
                if _record(ref / name) != _record(got / name)]
    if [e.step for e in read_manifest(ckpt_dir(ref))] != [e.step for e in read_manifest(ckpt_dir(got))]:
        problems.append("checkpoint steps")
    a, b = load_latest(ref), load_latest(got)
    if not _same_tensors(a[1]["model"], b[1]["model"]) or not _same_tensors(a[1]["optimizer"], b[1]["optimizer"]):
        problems.append("final weights or optimizer state")
    routing = lambda d: [(step, t.tolist()) for step, t in read_routing(d)]  # noqa: E731
    if routing(ref) != routing(got):
        problems.append("routing records")
    return problems


def _same_tensors(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _record(path: Path) -> Any:
    """A record file as what must reproduce: its content without wall-clock figures."""
    if not path.exists():
        return None
    if path.name == "metrics.jsonl":
        return [_without(row, WALL_CLOCK_FIELDS) for row in read_metrics(path.parent) if "event" not in row]
    if path.name == "result.json":
        return _without(json.loads(path.read_text()), RESULT_TIMINGS)
    if path.name == "infer.json":
        return _without(json.loads(path.read_text()), INFER_TIMINGS)
    if path.name == "report.csv":
        with open(path, newline="") as f:
            return [_without(row, REPORT_TIMINGS) for row in csv.DictReader(f)]
    if path.name == "report.md":
        return _untimed_report(path.read_text())
    return path.read_text()


def _without(obj: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def _untimed_report(md: str) -> list[str]:
    sections = re.split(r"^## ", md, flags=re.M)
    kept = [s for s in sections if s.split("\n", 1)[0] not in TIMED_SECTIONS]
    return [line for s in kept for line in s.splitlines() if "The KV cache speeds up decoding" not in line]


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # an undisturbed campaign, 6 killed sessions, the last one: 48-96 s at load 4-11 on 2 cores
def test_a_campaign_killed_at_random_moments_ends_with_the_undisturbed_records(tmp_path: Path, mini: str) -> None:
    toml = tmp_path / "soak.toml"
    toml.write_text(soak_campaign(mini))
    t0 = time.monotonic()
    undisturbed, soaked = tmp_path / "undisturbed" / "soak", tmp_path / "soaked" / "soak"  # report.md names it
    reference = session(toml, undisturbed)
    assert reference.returncode == 0, "\n".join(line for _, line in reference.lines[-20:])
    timeline = moments(reference.lines)
    plan, second = kill_plan(SEED, KILLS, timeline), {}

    def second_campaign(first: subprocess.Popen) -> None:
        """Frozen (SIGSTOP), the first session holds the folder while a second campaign tries it."""
        first.send_signal(signal.SIGSTOP)
        try:
            second["pid"] = first.pid
            second["proc"] = subprocess.run(campaign_cmd(toml, soaked), capture_output=True, text=True,
                                            timeout=120, env=ENV)
        finally:
            first.send_signal(signal.SIGCONT)

    sessions = soak(toml, soaked, plan, timeline, second_campaign)
    seconds = time.monotonic() - t0
    killed = [s.killed_after for s in sessions if s.returncode == -signal.SIGKILL]
    where = "\n".join(f"  session {i} ({s.seconds:.1f} s): " + (
        f"killed at {s.killed_after.name} ({s.killed_after.phase})" if s.returncode
        else "finished" + (f" before its kill at {s.killed_after.name}" if s.killed_after else ""))
        for i, s in enumerate(sessions, 1))
    replay = f"LLMLAB_SOAK_SEED={SEED} LLMLAB_SOAK_KILLS={KILLS}, plan {plan}\n{where}"
    print(f"\nsoak: survived {len(killed)} kills ({len(sessions)} sessions), {seconds:.0f} s in all "
          f"(the undisturbed run {reference.seconds:.0f} s); {replay}")
    problems = differences(undisturbed, soaked)
    assert not problems, f"{replay}\nrecords differ: {problems}"
    assert {PHASES[m.phase][0] for m in killed} == {0, 1, 2}, f"{replay}\na stage without a kill"

    refused = second["proc"]
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr.count("\n") == 1 and f"is in use by pid {second['pid']} " in refused.stderr, refused.stderr


def test_a_second_campaign_on_a_busy_folder_refuses_at_once_and_touches_nothing(tmp_path: Path, mini: str) -> None:
    """Here the first holder is this process. (A dead holder's lock -- the file a SIGKILLed
    campaign leaves, naming its pid -- blocks nothing: the soak resumes through it each time.)"""
    toml, out = tmp_path / "c.toml", tmp_path / "out"
    toml.write_text(soak_campaign(mini))
    with RunLock(out, what="campaign folder"):
        proc = subprocess.run(campaign_cmd(toml, out), capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"llmlab: error: campaign folder {out} is in use by pid {os.getpid()} on "
                           f"{socket.gethostname()}: another llmlab campaign is working there; wait for it "
                           "to end (or stop it), then run again\n")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written, nothing deleted


def test_a_run_folder_holding_only_a_cut_first_write_is_not_a_foreign_record(tmp_path: Path) -> None:
    """A kill during a run's first write (its fingerprint.json, through fingerprint.json.tmp) leaves a
    folder the next session must fill, not refuse as a run it cannot identify."""
    from llmlab.campaign import integrity

    run_dir = tmp_path / "mha" / "seed-0"
    run_dir.mkdir(parents=True)
    (run_dir / "fingerprint.json.tmp").write_text('{"fields": {"model.d_mod')
    fp = {"fields": {"model.d_model": 32}, "sha256": "x"}
    integrity.check_records([("mha", run_dir, fp)])  # no error
    (run_dir / "config.toml").write_text("")
    with pytest.raises(ConfigError, match="holds a run without fingerprint.json"):
        integrity.check_records([("mha", run_dir, fp)])
