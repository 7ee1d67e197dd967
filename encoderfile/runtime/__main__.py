"""`python -m encoderfile.runtime --bundle DIR embed hello`: the artifact's CLI from a venv."""

from encoderfile.runtime.cli import main

raise SystemExit(main())
