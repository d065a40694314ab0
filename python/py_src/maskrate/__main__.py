"""``python -m maskrate COMMAND ...``: the ``maskrate`` command (``preprocess``, ``inspect-batch``)."""

from .cli import main

raise SystemExit(main())
