from segflowd.cli import main

raise SystemExit(main())
