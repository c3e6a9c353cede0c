"""Model adapters: every way a model reaches us, behind one small protocol (batch in, probabilities out)."""

from stress.models import (
    command,  # noqa: F401  (registers the command adapter)
    compiled,  # noqa: F401  (registers the torchscript and onnx adapters)
    monai_bundle,  # noqa: F401  (registers the monai_bundle adapter)
)
from stress.models.base import ADAPTERS, LoadedModel, Prediction, Predictor, load_model

__all__ = ["ADAPTERS", "LoadedModel", "Prediction", "Predictor", "load_model"]
