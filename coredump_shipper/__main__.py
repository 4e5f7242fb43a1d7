from coredump_shipper.cli import main

raise SystemExit(main())
