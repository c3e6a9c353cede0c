"""The ``fine_tune`` update: a few Adam steps on fresh, shifted phantoms from the scenario's generator.

Training cases come from the scenario's phantom generator, parameters and population, with case
indices from :data:`FIRST_CASE` (10**9) on, so they never coincide with a test case (indices below
``phantom.n_cases`` <= 10**6). Step ``k`` uses cases ``FIRST_CASE + k * batch_size ...`` (every case
once). Each case gets the scenario's baseline chain with the ``shift`` perturbation replacing a step
of the same name or appended, exactly as a sweep point is built (:func:`stress.runner.build_chain`).
Phantoms and perturbation parameters are drawn with the fine-tune's ``seed`` in place of the
scenario's seed, so the fine-tuned model does not depend on which test cases the scenario draws.
The loss is the binary cross-entropy of the model's probabilities against the labels after the
chain. Training runs on the CPU, so the result is bit-identical for one torch version and thread
count whatever device the run uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from perturbations import apply_chain, chain_spacing
from phantoms import PHANTOMS
from stress.errors import StressError
from stress.models.base import Prediction
from stress.scenario.loader import phantom_spec
from stress.scenario.schema import DeriveFineTune, Scenario

FIRST_CASE = 10**9
CPU = torch.device("cpu")


def training_batch(sc: Scenario, d: DeriveFineTune, step: int) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """The images ``(B, 1, D, H, W)``, the spacing the model is told and the labels ``(B,)`` of one step."""
    from stress.runner import _step, _truth_after, build_chain, sample_chain  # the runner imports this module

    first = FIRST_CASE + step * d.batch_size
    indices = list(range(first, first + d.batch_size))
    batch = PHANTOMS.get(sc.phantom.generator).generate(phantom_spec(sc), sc.population, d.seed, indices, CPU)
    shift = () if d.shift is None else (_step(d.shift.name, d.shift.severity, d.shift.params),)
    steps = sample_chain(sc.model_copy(update={"seed": d.seed}), build_chain(sc, shift), batch)
    image = apply_chain(batch.image, batch.spacing_mm, steps)
    labels = torch.tensor([t["label"] for t in _truth_after(batch, steps)], dtype=torch.float32)
    return image, chain_spacing(batch.spacing_mm, steps), labels


def fine_tune(net: nn.Module, d: DeriveFineTune, sc: Scenario, where: str) -> dict[str, Any]:
    """Train ``net`` (on the CPU, in place) for ``d.steps`` steps; return what the fingerprint records."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise StressError(f"{where}.derive.from: the source has no trainable parameters (expected some)")
    opt = torch.optim.Adam(params, lr=d.lr)
    losses: list[float] = []
    net.train()
    with torch.enable_grad():
        for step in range(d.steps):
            try:
                image, told, labels = training_batch(sc, d, step)
            except ValueError as exc:
                raise StressError(f"{where}.derive: fine-tuning cases of step {step}: {exc}") from None
            try:
                out = net.predict(image, told)
            except Exception as exc:  # noqa: BLE001  (any failure of user model code)
                raise StressError(
                    f"{where}.derive: predict() raised {type(exc).__name__} while fine-tuning (on the CPU): "
                    f"{exc} (expected the model to run on CPU tensors with autograd)"
                ) from None
            scores = (out.scores if isinstance(out, Prediction) else out).reshape(-1).float()
            if not scores.requires_grad:
                raise StressError(
                    f"{where}.derive: the source's predict() output carries no gradient (expected "
                    "probabilities computed with autograd, not under no_grad or inference_mode)"
                )
            loss = nn.functional.binary_cross_entropy(scores, labels)
            if not torch.isfinite(loss):
                raise StressError(
                    f"{where}.derive: fine-tuning loss is {float(loss)} at step {step} (expected finite)"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    net.eval()
    return {
        "fine_tune_cases": f"{FIRST_CASE}..{FIRST_CASE + d.steps * d.batch_size - 1}",
        "fine_tune_first_loss": losses[0],
        "fine_tune_final_loss": losses[-1],
    }
