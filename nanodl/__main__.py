"""``python -m nanodl``: the command line (see ``nanodl.cli``)."""
from .cli import main

raise SystemExit(main())
