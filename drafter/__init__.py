"""drafter: train small drafter heads for a frozen LLM and use them for lossless speculative decoding."""

from .models import (
    ArcticLSTMSpeculator,
    ArcticLSTMSpeculatorConfig,
    AutoDrafter,
    DrafterConfig,
    DrafterMismatchError,
    RecurrentDraftingConfig,
    RecurrentDraftingModel,
)

__version__ = "0.1.0"

__all__ = [
    "ArcticLSTMSpeculator",
    "ArcticLSTMSpeculatorConfig",
    "AutoDrafter",
    "DrafterConfig",
    "DrafterMismatchError",
    "RecurrentDraftingConfig",
    "RecurrentDraftingModel",
    "__version__",
]
