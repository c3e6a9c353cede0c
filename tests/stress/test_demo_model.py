import torch

from phantoms.chest_ct import ChestCTSpec
from stress.models.demo import WEIGHTS_DIR, NoduleNet, candidate, reference
from stress.models.demo.train import make_cases, train

SMALL = ChestCTSpec(shape=(16, 32, 32), spacing_mm=(10.0, 10.0, 10.0), vessel_generations=2)


def test_shipped_weights_are_small_and_load():
    for name in ("nodule_v1.pt", "nodule_v2.pt"):
        assert (WEIGHTS_DIR / name).stat().st_size < 1_000_000
    x = torch.full((2, 1, 16, 32, 32), -1000.0)
    for model in (reference(), candidate()):
        p = model.predict(x, (10.0, 10.0, 10.0))
        assert p.shape == (2,) and torch.all((p >= 0) & (p <= 1))
    assert reference().version == "v1" and candidate().version == "v2"


def test_training_is_reproducible_bit_for_bit():
    cases = make_cases(8, 99, SMALL)
    a = train("v1", epochs=1, batch_size=4, spec=SMALL, cases=cases)
    b = train("v1", epochs=1, batch_size=4, spec=SMALL, cases=cases)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    fresh = NoduleNet().state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in a.state_dict().items())  # it did train
