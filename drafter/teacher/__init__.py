"""Teacher data: the frozen base model's own answers to prompts (sharded, resumable, exactly once) and the
distilled-dataset continuations at every assistant position."""

from .config import TeacherDataMismatchError, TeacherGenerationConfig, TeacherGenerationResult
from .distill import add_distill_targets, compute_distill_targets
from .merge import merge_teacher_shards

__all__ = [
    "TeacherDataMismatchError",
    "TeacherGenerationConfig",
    "TeacherGenerationResult",
    "add_distill_targets",
    "compute_distill_targets",
    "generate_teacher_data",
    "merge_teacher_shards",
]


def __getattr__(name):
    # Imported on first use: keeps `python -m drafter.teacher.generate` free of runpy's double-import warning.
    if name == "generate_teacher_data":
        from .generate import generate_teacher_data

        return generate_teacher_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
