from .arctic_lstm import ArcticLSTMSpeculator, ArcticLSTMSpeculatorConfig
from .auto import DRAFTER_FAMILIES, AutoDrafter, register_drafter_family
from .base_drafter import DrafterConfig, DrafterMismatchError, DrafterPreTrainedModel
from .redrafter import RecurrentDraftingConfig, RecurrentDraftingModel

__all__ = [
    "ArcticLSTMSpeculator",
    "ArcticLSTMSpeculatorConfig",
    "AutoDrafter",
    "DRAFTER_FAMILIES",
    "DrafterConfig",
    "DrafterMismatchError",
    "DrafterPreTrainedModel",
    "RecurrentDraftingConfig",
    "RecurrentDraftingModel",
    "register_drafter_family",
]
