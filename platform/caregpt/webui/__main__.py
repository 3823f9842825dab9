"""`python -m caregpt.webui ...` is `caregpt webui ...`."""

from caregpt.webui.cli import main

raise SystemExit(main())
