from llmtally.cli import main

raise SystemExit(main())
