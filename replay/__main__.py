"""`outreachctl rehearse` (docs/rehearsal.md): the command of
services/outreach/rehearsal, replaying in this process (engine.py) unless
`--through-services` is given.

    python -m replay --from 7d [--rules FILE] [--templates draft] [--archive FILE] ...
"""

from __future__ import annotations

import sys

from replay.engine import in_process
from services.outreach.rehearsal.__main__ import main

if __name__ == "__main__":
    sys.exit(main(replayer=in_process))
