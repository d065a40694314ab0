"""``python -m maskrate preprocess ...``: the ``preprocess`` command for pip users."""

from .cli import main

raise SystemExit(main())
