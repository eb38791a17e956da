"""`python -m resnetlab ...` is the same as the `resnetlab` command."""

from resnetlab.cli import main

raise SystemExit(main())
