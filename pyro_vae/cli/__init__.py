"""The ``pyro-vae`` command line (:func:`pyro_vae.cli.main.main`)."""
