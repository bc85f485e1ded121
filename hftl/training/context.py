"""The run's context: one object that carries what a training run has built, from set-up to finish.

:func:`hftl.training.train.run` fills it in the order things are built (recipe and task first, then the
accelerator, data, model, loaders, plan, optimizer and scheduler, then the loop state) and hands it, whole,
to its named steps and to the run hooks (:mod:`hftl.training.hooks`), instead of passing its pieces one by
one. A field is ``None`` until the step that builds it has run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan
    from hftl.tasks import PreparedData, Task


@dataclass
class LoopState:
    """Everything the loop carries from step to step; saved with each resumable state."""

    step: int = 0
    epoch: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    best_scores: dict[str, float] | None = None
    bad_evals: int = 0
    done: bool = False
    loss_sum: float = 0.0  # the training loss summed since the last log line (synced from the device when read)


class Costs:
    """Seconds per part of a run (metrics.json ``seconds``; a study's cost breakdown): load and tokenize (from
    the prepared data), model, features, train (the probe fit and the loop's steps), validate, final_eval."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._loop: tuple[float, float] = (0.0, 0.0)  # wall clock and validation seconds when the loop started

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started

    def start_loop(self) -> None:
        """The loop starts now (its evaluations are counted as validate, not train)."""
        self._loop = (time.time(), self.seconds.get("validate", 0.0))

    def end_loop(self) -> float:
        """The loop ended: its seconds, of which those not spent validating are added to train."""
        seconds = time.time() - self._loop[0]
        in_loop = self.seconds.get("validate", 0.0) - self._loop[1]
        self.seconds["train"] = self.seconds.get("train", 0.0) + seconds - in_loop
        return seconds


@dataclass
class RunContext:
    """What one run has built so far (see the module docstring)."""

    recipe: Recipe
    task: Task
    run_dir: Path
    resume: bool
    accelerator: Any = None
    data: PreparedData | None = None
    model: Any = None
    plan: Plan | None = None
    train_dl: Any = None
    eval_dls: dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    group_names: list[str] = field(default_factory=list)  # the plan's layer group of each optimizer param group
    extra_modules: dict[str, Any] = field(default_factory=dict)  # trained beside the model, saved in checkpoints
    eval_model: Any = None  # what is evaluated and saved as the best model when not the model itself (the EMA)
    hooks: Any = None  # the run's Hooks (hftl.training.hooks), for the loop's named steps
    head_chain: list[Any] = field(default_factory=list)  # the head modules run on cached features (if cached)
    evaluate_first: bool = False  # a hook set the head before the loop: its weights are the first best candidate
    state: LoopState = field(default_factory=LoopState)
    running_loss: torch.Tensor | None = None  # the loss since the last log line, on the device (no per-batch sync)
    costs: Costs = field(default_factory=Costs)
    on_evaluate: Callable[[int, dict[str, float]], None] | None = None  # the caller's, after each evaluation

    @property
    def evaluated_model(self) -> Any:
        """The model scored at each evaluation and saved when best: a hook's (the EMA of the weights), else the
        trained one."""
        return self.model if self.eval_model is None else self.eval_model

    @property
    def metric(self) -> str:
        """The validation metric that picks the best model (``train.metric``, else the problem type's default)."""
        from hftl.tasks import selection_metric

        return selection_metric(self.recipe)

    def add_loss(self, loss: torch.Tensor, grad_accum: int) -> None:
        """Accumulate one micro-batch's loss on the device; read back only at log and save steps.

        Float64, as the Python floats it replaces: ``float32 -> float64`` is exact and each ``/`` and ``+`` is the
        same IEEE operation, so the logged means are bit for bit those of ``loss.item()`` summed on the host.
        """
        import torch

        if self.running_loss is None:
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64  # MPS has no float64
            self.running_loss = torch.tensor(self.state.loss_sum, dtype=dtype, device=loss.device)
        self.running_loss += loss.detach().float().to(self.running_loss.dtype) / grad_accum

    def synced_state(self) -> LoopState:
        """The loop state with the device-side loss sum read back (a log line or a saved state needs it)."""
        if self.running_loss is not None:
            self.state.loss_sum = self.running_loss.item()
        return self.state

    def reset_loss(self) -> None:
        """Start a new log interval."""
        self.state.loss_sum = 0.0
        if self.running_loss is not None:
            self.running_loss.zero_()
