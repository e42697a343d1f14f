"""Training a program by SVI: data sets, the loop, optimisers and schedules, initialisation, data parallelism."""
