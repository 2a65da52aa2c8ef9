"""``python -m cowrieprocessor.cli``: the same as ``cowrie-db``."""

from cowrieprocessor.cli.entry import main

raise SystemExit(main())
