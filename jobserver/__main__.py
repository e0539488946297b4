"""`python -m jobserver`."""

from jobserver.cli import main

raise SystemExit(main())
