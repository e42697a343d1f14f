"""The model/guide pair: its public API, sample sites, shapes and minibatch scaling."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from helpers import EVENT_SHAPE, tiny_batch, tiny_vae


def test_sites_of_model_and_guide():
    vae, x = tiny_vae(), tiny_batch()
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    sample_sites = lambda tr: {n: s for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}  # noqa: E731
    assert set(sample_sites(guide)) == {"z"}
    assert set(sample_sites(model)) == {"z", "x"}
    assert model.nodes["x"]["is_observed"] and not model.nodes["z"]["is_observed"]
    assert model.nodes["z"]["fn"].event_shape == (2,)
    assert model.nodes["x"]["fn"].event_shape == EVENT_SHAPE
    assert model.nodes["x"]["fn"].batch_shape == (len(x),)
    assert "data" in {f.name for f in model.nodes["x"]["cond_indep_stack"]}


def test_prior_encode_decode():
    vae, x = tiny_vae(latent_dim=3), tiny_batch()
    prior = vae.prior()
    assert prior.event_shape == (3,) and prior.batch_shape == ()
    q = vae.encode(x)
    assert q.event_shape == (3,) and q.batch_shape == (len(x),)
    assert (q.base_dist.scale > 0).all()
    p = vae.decode(q.rsample())
    assert p.event_shape == EVENT_SHAPE and p.batch_shape == (len(x),)
    assert p.log_prob(x).shape == (len(x),)
    # Leading dimensions (particles) pass through the decoder.
    assert vae.decode(torch.zeros(5, len(x), 3, dtype=x.dtype)).batch_shape == (5, len(x))


def test_minibatch_plate_scales_to_the_data_set_size():
    vae, x = tiny_vae(), tiny_batch()
    pyro.set_rng_seed(3)
    full = poutine.trace(vae.model).get_trace(x)
    pyro.set_rng_seed(3)
    mini = poutine.trace(vae.model).get_trace(x, num_data=60)
    full.compute_log_prob(), mini.compute_log_prob()
    for site in ("z", "x"):
        assert mini.nodes[site]["scale"] == pytest.approx(60 / len(x))
        torch.testing.assert_close(mini.nodes[site]["log_prob_sum"], full.nodes[site]["log_prob_sum"] * 60 / len(x))


def test_reconstruct_and_sample_shapes():
    vae, x = tiny_vae(), tiny_batch()
    assert vae.reconstruct(x).shape == x.shape
    samples = vae.sample(7)
    assert samples.shape == (7, *EVENT_SHAPE) and ((samples >= 0) & (samples <= 1)).all()


def test_two_vaes_do_not_share_parameters():
    a, b, x = tiny_vae(), tiny_vae(), tiny_batch()
    poutine.trace(a.guide).get_trace(x)
    poutine.trace(b.guide).get_trace(x)
    a_params = {id(p) for p in a.parameters()}
    store = pyro.get_param_store()
    b_names = [n for n in store.keys() if n.startswith(b._pyro_name + "$$$")]
    assert b_names and all(id(store[n].unconstrained()) not in a_params for n in b_names)
