"""``python -m bench``: the benchmark's command line (``bench/run`` prepares and calls it)."""

from bench.harness import main

raise SystemExit(main())
