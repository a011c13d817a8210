from .auto import DRAFTER_FAMILIES, AutoDrafter, register_drafter_family
from .base_drafter import DrafterConfig, DrafterMismatchError, DrafterPreTrainedModel
from .redrafter import RecurrentDraftingConfig, RecurrentDraftingModel

__all__ = [
    "AutoDrafter",
    "DRAFTER_FAMILIES",
    "DrafterConfig",
    "DrafterMismatchError",
    "DrafterPreTrainedModel",
    "RecurrentDraftingConfig",
    "RecurrentDraftingModel",
    "register_drafter_family",
]
