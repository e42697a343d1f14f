"""Inference on a program: ELBO estimators, closed-form terms, log p(x), diagnostics and estimator comparisons.

Every tool here reads a program's sites from Pyro traces, walked by site type, never by name.
"""
