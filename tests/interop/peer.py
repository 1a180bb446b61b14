"""Run a script in a fresh Python process that never imports siglip_lightning, and read its JSON answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Appended to every peer script: proves the answer came from the peer library alone.
_GUARD = "\nimport sys\nassert 'siglip_lightning' not in sys.modules, 'the peer process imported siglip_lightning'\n"


def run_peer(script: str, payload: dict, timeout: int = 300):
    """``script`` reads ``payload`` from ``json.loads(sys.argv[1])`` and prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script) + _GUARD, json.dumps(payload)],
                            capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
