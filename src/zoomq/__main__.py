from zoomq.cli.main import main

raise SystemExit(main())
