"""``python -m datacopilot``: the command line (see :mod:`datacopilot.cli`)."""

from datacopilot.cli import main

main(prog_name="datacopilot")
