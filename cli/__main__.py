"""``python -m cli``: the same as the ``vmss-patcher`` console script."""

from cli.main import main

raise SystemExit(main())
