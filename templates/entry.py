"""Entry point of the frozen runtime: the artifact's command line and nothing else."""

from encoderfile.runtime.cli import main

raise SystemExit(main())
