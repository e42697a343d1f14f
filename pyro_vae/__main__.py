"""``python -m pyro_vae`` runs the ``pyro-vae`` command line."""

import sys

from pyro_vae.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
