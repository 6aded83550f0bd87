from ftdsl.cli import main

raise SystemExit(main())
