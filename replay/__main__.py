"""`outreachctl rehearse` (docs/rehearsal.md): the command of
services/outreach/rehearsal, replaying in this process (engine.py) unless
`--through-services` is given.

    python -m replay --from 7d [--rules FILE] [--templates draft] [--archive FILE] ...
"""

from __future__ import annotations

import signal
import sys

# Heard from the start, even when started with SIGINT ignored (what the command's main
# sets again): the imports below take a second or two, and an interrupt in them would
# be lost — the studio would SIGKILL the run 25 s later.
signal.signal(signal.SIGINT, signal.default_int_handler)

from replay.engine import in_process  # noqa: E402
from services.outreach.rehearsal.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(replayer=in_process))
