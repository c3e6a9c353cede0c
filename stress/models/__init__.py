"""Model adapters: every way a model reaches us, behind one small protocol (batch in, probabilities out)."""

from stress.models.base import ADAPTERS, LoadedModel, Prediction, Predictor, load_model
from stress.models import command  # noqa: E402, F401  (registers the command adapter)

__all__ = ["ADAPTERS", "LoadedModel", "Prediction", "Predictor", "load_model"]
