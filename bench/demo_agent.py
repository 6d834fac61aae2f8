"""One agent of ``mcast demo``: load everything, say ready, wait for "go", then be the agent.

    python -m bench.demo_agent MARKER AGENT-ARGS...

The demo starts N of these and releases each once every one has printed
``{"event": "ready"}`` (together, or ``--spread`` seconds apart), so that imports (trio,
httpx, cryptography) do not decide which agent asks first. ``MARKER`` is where the demo
package's install.py records that it ran (``MCAST_DEMO_MARKER`` in the command's
environment); the rest are ``mcast-agent`` options, run as they are in this process: the demo
passes ``--once --serve-cache-for SECONDS``, so the agent serves its own peer cache after its
run until the demo sends it SIGTERM, and everything the demo reads (the session a download
joined, the run's exit code, the peer cache's stats) is the agent's own JSON output. The exit
code is the agent's.
"""

from __future__ import annotations

import json
import os
import sys

from agent.cli import main as agent_main


def main(argv: list[str]) -> int:
    os.environ["MCAST_DEMO_MARKER"] = argv[0]
    print(json.dumps({"event": "ready"}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 130
    return agent_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
