"""Deliberately broken model factories for tests of bad model output."""

import torch


class _NaNAfterFirstBatch:
    """Valid probabilities for the first batch, then NaN for one case: simulates a model failing mid-run."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, image, spacing_mm):
        self.calls += 1
        out = torch.full((image.shape[0],), 0.5)
        if self.calls > 4:
            out[-1] = float("nan")
        return out


def nan_model(device="cpu"):
    return _NaNAfterFirstBatch()


class _Raises:
    def predict(self, image, spacing_mm):
        raise RuntimeError("CUDA out of memory (simulated)")


def raising_model(device="cpu"):
    return _Raises()


def missing_weights(device="cpu"):
    raise FileNotFoundError("weights/model.pt")


class _InPlace:
    """A model that normalises its input in place (allowed) and answers from it."""

    def predict(self, image, spacing_mm):
        image.sub_(image.mean()).div_(1000.0)
        return torch.sigmoid(image.flatten(1).amax(dim=1))


def in_place_model(device="cpu"):
    return _InPlace()


class _Recorder:
    """Answers 0.5 and keeps the last input and spacing it was given (for pre-processing tests)."""

    def __init__(self) -> None:
        self.seen = None

    def predict(self, image, spacing_mm):
        self.seen = (image.clone(), tuple(spacing_mm))
        return torch.full((image.shape[0],), 0.5)


def recorder(device="cpu"):
    return _Recorder()
