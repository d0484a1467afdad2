from sensor.cli import main

raise SystemExit(main())
