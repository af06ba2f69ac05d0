from openrecon_stroke.cli import main

raise SystemExit(main())
