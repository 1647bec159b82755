"""Training tasks: one file per task holding its settings, data builder, loss and metrics.

Each task is a frozen dataclass (``jaxformers.tasks.base.Task``): an experiment's ``task`` field
holds one (``--set task.dupe_factor=5``), and the Trainer keeps it as the static loss of its step.
"""

from __future__ import annotations

from jaxformers.tasks.base import Task, TaskData
from jaxformers.tasks.causal_lm import CausalLM
from jaxformers.tasks.classification import Classification
from jaxformers.tasks.mlm_nsp import MLMNSP
from jaxformers.tasks.question_answering import QuestionAnswering
from jaxformers.tasks.span_corruption import SpanCorruption
from jaxformers.tasks.text_to_text import TextToText
from jaxformers.tasks.token_classification import TokenClassification

TASKS: dict[str, type] = {
    t.name: t
    for t in (
        CausalLM,
        MLMNSP,
        SpanCorruption,
        Classification,
        TextToText,
        TokenClassification,
        QuestionAnswering,
    )
}

__all__ = [
    "TASKS",
    "Task",
    "TaskData",
    "CausalLM",
    "MLMNSP",
    "SpanCorruption",
    "Classification",
    "TextToText",
    "TokenClassification",
    "QuestionAnswering",
    "get",
]


def get(name: str) -> type:
    """The task class named ``name`` (``"causal_lm"``, ``"mlm_nsp"``, ...)."""
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))} "
            "(e.g. --set task=causal_lm)"
        )
    return TASKS[name]
