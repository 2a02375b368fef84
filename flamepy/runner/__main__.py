"""``python -m flamepy.runner``: the Runner smoke test (same as ``python -m flamepy.runner.e2e``)."""

from .e2e import main

if __name__ == "__main__":
    raise SystemExit(main())
