from toolkit.emulator.cli import main

raise SystemExit(main())
