"""What the benchmark scripts share: how a result records the way it was made, and writing it."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def provenance(script: str) -> dict[str, Any]:
    """The command that produced a result (as run from the repository root) and the machine."""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


def publish(report: dict[str, Any], out: str | None) -> None:
    """Print the result as JSON, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
