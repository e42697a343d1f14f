"""One process of the data-parallel equivalence test, started by torchrun (see test_distributed.py).

The draws of z are replaced by a fixed point of each Gaussian, ``loc + scale / 2``, in this
process and in the single-process reference alike, so that only the arithmetic of sharding,
loss scaling and gradient averaging is compared. Writes process 0's results with torch.save.
"""

import sys

import torch
from torch.distributions import Normal

from pyro_vae import make_vae
from pyro_vae.training.data import Dataset
from pyro_vae.training.distributed import from_env
from pyro_vae.training.loop import fit

CASES = [dict(elbo="mc"), dict(elbo="analytic", fused=True), dict(elbo="mc", beta=0.0, fused=True)]


def deterministic_draws():
    """Make every reparameterised Normal draw its own ``loc + scale / 2``."""

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.loc.expand(shape) + 0.5 * self.scale.expand(shape)

    Normal.rsample = rsample


def toy_data():
    x = torch.rand(64, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return Dataset("toy", x[:48], x[48:])


def train(case, batch_size, distributed=None):
    torch.manual_seed(0)
    vae = make_vae(
        (4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]}, prior={"type": "normal", "learnable": True}
    ).double()
    history = fit(
        vae, toy_data(), epochs=2, batch_size=batch_size, progress=False, seed=3, distributed=distributed, **case
    )
    return {"parameters": vae.state_dict(), "history": history}


def main(out: str, batch_size: int) -> None:
    torch.set_default_dtype(torch.float64)
    deterministic_draws()
    distributed = from_env(torch.device("cpu"))
    try:
        results = [train(case, batch_size, distributed) for case in CASES]
    finally:
        distributed.close()
    if distributed.is_main:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
