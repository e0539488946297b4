"""`python -m jobserver`."""

from .cli import main

raise SystemExit(main())
