"""`python -m coredump_shipper`: the same command line as `coredump-shipper`."""

from coredump_shipper.cli import main

raise SystemExit(main())
