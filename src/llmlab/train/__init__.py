"""Training: a pure LR schedule, AdamW, the train step, metrics, torchrun (checkpoints: llmlab.checkpoint).

`train(run_cfg, run_dir)` runs (or resumes) one run; `evaluate_run(run_dir, split)` re-evaluates
a finished or interrupted one. Exit codes of `llmlab train`: see `llmlab.train.signals`.
"""

from llmlab.train.evaluate import evaluate_run
from llmlab.train.loop import TrainingDiverged, TrainOutcome, train
from llmlab.train.schedule import lr_at
from llmlab.train.signals import EXIT_DIVERGED, EXIT_OK, EXIT_STOPPED

__all__ = ["train", "evaluate_run", "lr_at", "TrainOutcome", "TrainingDiverged", "EXIT_OK", "EXIT_STOPPED", "EXIT_DIVERGED"]
