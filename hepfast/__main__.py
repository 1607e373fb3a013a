from hepfast.cli import main

raise SystemExit(main())
