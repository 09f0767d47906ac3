"""`python -m hashrobust ...`: the `hashrobust` command, for an environment whose scripts folder is not on PATH."""
from .cli import command

raise SystemExit(command())
