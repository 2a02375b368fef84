"""Command line tools of flamepy (``flmctl``)."""
