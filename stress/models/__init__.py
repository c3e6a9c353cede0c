"""Model adapters: every way a model reaches us, behind one small protocol (batch in, probabilities out)."""

from stress.models.base import ADAPTERS, LoadedModel, Predictor, load_model

__all__ = ["ADAPTERS", "LoadedModel", "Predictor", "load_model"]
