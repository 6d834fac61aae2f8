"""One agent of ``mcast demo``: load everything, say ready, wait for "go", be the agent.

    python -m bench.demo_agent MARKER AGENT-ARGS...

The demo starts N of these and releases them together once every one has printed
``{"event": "ready"}``, so that imports (trio, httpx, cryptography) do not decide which agent
asks first. ``MARKER`` is where the demo package's install.py records that it ran
(``MCAST_DEMO_MARKER`` in the command's environment); the rest are ``mcast-agent`` options.
"""

from __future__ import annotations

import json
import os
import sys

import mcast.fetch  # noqa: F401  # loaded before "ready", though only the agent uses it
from agent.cli import main as agent_main


def main(argv: list[str]) -> int:
    os.environ["MCAST_DEMO_MARKER"] = argv[0]
    print(json.dumps({"event": "ready"}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 130
    return agent_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
