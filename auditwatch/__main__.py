from auditwatch.cli import main

raise SystemExit(main())
