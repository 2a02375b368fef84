"""``python -m flo_client.cli``: the ``flo`` command."""

from . import main

main(prog_name="flo")
