"""Programs and their parts: the VAE program, priors, likelihoods, networks and the distributions they use.

Nothing here computes a loss; :mod:`pyro_vae.infer` does, from Pyro traces of a program.
"""
