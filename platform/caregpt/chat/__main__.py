"""`python -m caregpt.chat ...` is `caregpt chat ...`."""

from caregpt.chat.repl import main

raise SystemExit(main())
