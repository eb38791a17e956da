"""`python -m resnetlab ...` is the same as the `resnetlab` command."""

from .cli import main

raise SystemExit(main())
