"""Pictures: drawing leaves the user's matplotlib as it was, every estimator gets a line, short runs show."""

import inspect

import matplotlib
import pytest
import torch

from pyro_vae import make_vae, plots
from pyro_vae.training.data import Dataset

PNG = b"\x89PNG"


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, in order (they are written as usual)."""
    saved = []
    save = plots._save

    def record(fig, *args, **kwargs):
        saved.append(fig)
        save(fig, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", record)
    return saved


def _legend(fig):
    return [[text.get_text() for text in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]


def test_draw_pictures_leaves_the_backend_alone(tmp_path, figures):
    vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [8]})
    data = Dataset("toy", torch.rand(16, 8, 8), torch.rand(12, 8, 8), test_labels=torch.randint(0, 10, (12,)))
    history = [
        {"epoch": e, "train_elbo": -40.0 + e, "test_elbo": -41.0 + e, "test_elbo_a": -41.0 + e, "test_elbo_b": -42.0}
        | {"active_units": e, "kl_per_dim": [0.1 * e, 0.0]}
        for e in (1, 2)
    ]
    original = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend but Agg, one that needs no display
    try:
        drawn = plots.draw_pictures(vae, data, history, tmp_path, "toy | mlp | latent 2")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(original)
    assert drawn == ["reconstructions.png", "samples.png", "latent.png", "manifold.png", "curves.png", "collapse.png"]
    for name in drawn:
        assert (tmp_path / name).read_bytes().startswith(PNG), name
    assert _legend(figures[-2]) == [["train (training objective)", "test, a estimator", "test, b estimator"]]
    assert "pyplot" not in inspect.getsource(plots)


def test_curves_of_several_runs_name_the_run_then_the_metric(tmp_path, figures):
    history = [{"epoch": e, "train_elbo": -40.0 + e, "test_elbo": -41.0 + e} for e in (1, 2)]
    plots.plot_curves({"mc": history, "analytic": history}, tmp_path / "curves.png")
    assert _legend(figures[-1]) == [
        ["mc: train (training objective)", "mc: test", "analytic: train (training objective)", "analytic: test"]
    ]


def test_gradient_variance_has_a_line_per_estimator(tmp_path, figures):
    rows = [
        {"estimator": name, "num_particles": n, "grad_variance": {"encoder": 1.0 / n, "decoder": 2.0 / n}}
        for name in ("mc", "analytic", "other")
        for n in (1, 4, 16)
    ]
    plots.plot_gradient_variance({"rows": rows}, tmp_path / "variance.png", "caption")
    assert (tmp_path / "variance.png").read_bytes().startswith(PNG)
    assert _legend(figures[0]) == [["mc", "analytic", "other"]] * 2
    styles = [(line.get_marker(), line.get_linestyle()) for line in figures[0].axes[0].get_lines()]
    assert len(set(styles)) == 3


def test_curves_of_one_epoch_are_marked(tmp_path, figures):
    history = [{"epoch": 1, "train_elbo": -50.0, "test_elbo": -51.0}]
    plots.plot_curves({"run": history}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 2
    assert all(line.get_marker() not in (None, "None", "") for line in lines)
