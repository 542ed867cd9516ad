"""``python -m wtal``: the same entry point as the ``wtal`` console script."""

from wtal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
