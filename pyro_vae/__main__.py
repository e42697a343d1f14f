"""``python -m pyro_vae`` runs the ``pyro-vae`` command line."""

import sys

from pyro_vae.cli.main import entry

if __name__ == "__main__":
    sys.exit(entry())
