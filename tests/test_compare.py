"""Comparing the two ELBO estimators: same mean, and gradient variances that behave as theory says.

Tolerances on variances come from the sampling distribution of a variance estimate: with R
repeats its relative standard error is at most sqrt(2 / (R − 1)) (equality for one coordinate;
summing weakly correlated coordinates only shrinks it), so a ratio of two independent estimates
has relative standard error at most sqrt(2)·sqrt(2 / (R − 1)).
"""

import math

import pytest

from pyro_vae.infer.compare import compare_estimators, format_comparison

from helpers import tiny_batch, tiny_vae

REPEATS = 200
RATIO_RSE = math.sqrt(2) * math.sqrt(2 / (REPEATS - 1))


@pytest.fixture(scope="module")
def result():
    import pyro

    pyro.set_rng_seed(0)
    return compare_estimators(tiny_vae(), tiny_batch(n=16), particles=(1, 16), repeats=REPEATS)


def row(result, estimator, particles):
    return next(r for r in result["rows"] if r["estimator"] == estimator and r["num_particles"] == particles)


def test_means_agree_within_four_standard_errors(result):
    assert result["kl"] == {"z": "closed_form"}
    for a in result["agreement"]:
        assert abs(a["difference_in_se"]) < 4


def test_gradient_variance_falls_as_one_over_particles(result):
    for estimator in ("mc", "analytic"):
        for group in ("encoder", "decoder"):
            ratio = (
                row(result, estimator, 1)["grad_variance"][group] / row(result, estimator, 16)["grad_variance"][group]
            )
            assert abs(ratio / 16 - 1) < 4 * RATIO_RSE, (estimator, group, ratio)


def test_decoder_gradient_is_the_same_under_both_estimators(result):
    """The decoder sees only log p(x|z), which both estimators sample alike: equal variance in distribution."""
    for a in result["agreement"]:
        assert abs(a["grad_variance_ratio"]["decoder"] - 1) < 4 * RATIO_RSE
        assert a["grad_variance_ratio"]["prior"] is None  # the standard normal has no parameters


def test_table_and_sampled_kl_note():
    import pyro

    pyro.set_rng_seed(0)
    sampled = compare_estimators(tiny_vae(prior={"type": "student_t"}), tiny_batch(), particles=(1,), repeats=3)
    assert sampled["kl"] == {"z": "sampled"}
    text = format_comparison(sampled)
    assert "no closed-form KL for z" in text and "mc - analytic" in text
