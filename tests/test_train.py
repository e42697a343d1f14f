"""The SVI loop: it learns, it is reproducible, it stops on NaN, and the JIT path trains the same."""

from pathlib import Path

import pytest
import torch

from pyro_vae import elbo_per_example, fit, load_dataset, make_vae
from pyro_vae.cli.main import main
from pyro_vae.errors import ConfigError
from pyro_vae.training.loop import TrainingDiverged

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_vae(data, seed=0):
    torch.manual_seed(seed)
    return make_vae(data.event_shape, latent_dim=4, network={"type": "mlp", "hidden": [32]})


def test_history_and_reproducibility():
    data = load_dataset("digits")
    runs = [fit(small_vae(data), data, epochs=2, batch_size=256, progress=False) for _ in range(2)]
    assert [h["epoch"] for h in runs[0]] == [1, 2]
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


def test_jit_training_learns():
    # Step-by-step equality with the reference estimator is tested in test_objectives; here the
    # compiled objective drives a whole training run (compilation draws extra random numbers, so
    # the trajectory is not the un-jitted one draw for draw).
    data = load_dataset("digits")
    history = fit(small_vae(data), data, epochs=2, batch_size=128, elbo="analytic", jit=True, progress=False)
    assert history[1]["test_elbo"] > history[0]["test_elbo"]


def test_nan_stops_training_with_epoch_and_step():
    data = load_dataset("digits")
    vae = small_vae(data)
    with torch.no_grad():
        vae.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at epoch 1, step 1; lower the learning rate"):
        fit(vae, data, epochs=1, progress=False)


def test_batch_larger_than_data():
    data = load_dataset("digits")
    with pytest.raises(ConfigError, match="use batch_size=1438 or less"):
        fit(small_vae(data), data, batch_size=5000, progress=False)


@pytest.mark.slow
def test_learns_digits_beyond_independent_pixels():
    data = load_dataset("digits")
    vae = small_vae(data)
    history = fit(vae, data, epochs=40, elbo="mc", progress=False)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    # A VAE that ignores z is at best the product of per-pixel Bernoullis fitted to the training
    # set; beating it on the test set, per image and beyond four standard errors of the paired
    # difference, shows that the code carries information about the image.
    pixel_means = data.train.mean(0).clamp(1e-3, 1 - 1e-3)
    independent = torch.distributions.Bernoulli(pixel_means, validate_args=False).log_prob(data.test).sum((-2, -1))
    with torch.no_grad():
        elbo = elbo_per_example(vae.eval(), data.test, "analytic", num_particles=10)
    gain = (elbo - independent).double()
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_mnist_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "mnist"
    args = [
        "train",
        "--dataset",
        "mnist",
        "--data-root",
        str(SHARED_DATA),
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "60000 train / 10000 test" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--json"]) == 0
    assert '"num_examples": 10000' in capsys.readouterr().out


def test_a_notebook_without_widgets_gets_the_text_progress_bar():
    """Without ipywidgets, importing tqdm.auto in a notebook warns "IProgress not found": the text bar is taken."""
    import tqdm.auto
    import tqdm.std

    from pyro_vae.training.loop import progress_bar_class

    assert progress_bar_class(widgets=False) is tqdm.std.tqdm
    assert progress_bar_class(widgets=True) is tqdm.auto.tqdm
