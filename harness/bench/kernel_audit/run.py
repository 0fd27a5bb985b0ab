"""Run the compile audit for several GPU targets at once, each in a process of its own.

The audit replaces Triton's active driver and must import the kernel modules without the
interpreter, so it never runs inside the caller's process (a test session that set
TRITON_INTERPRET=1, a CLI that may already have launched kernels). One subprocess per target,
all started together: compiling is single-threaded, so two targets take the time of one on a
2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import PROJECT_ROOT


def audit_targets(archs, shapes: str, dtypes: str, workloads: str, cwd: str | None = None) -> dict:
    """{arch: {"returncode", "summary", "result" (records, failures, ...) or None, "stderr"}}."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(PROJECT_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kernel-audit-") as tmp:
        procs = {}
        for arch in archs:
            path = Path(tmp) / f"{arch}.json"
            cmd = [sys.executable, "-m", "harness.bench.kernel_audit.audit", "--arch", arch, "--shapes", shapes,
                   "--dtypes", dtypes, "--workloads", workloads, "--json", str(path)]
            procs[arch] = (subprocess.Popen(cmd, cwd=cwd or root, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), path)
        for arch, (proc, path) in procs.items():
            stdout, stderr = proc.communicate()
            result = json.loads(path.read_text()) if path.exists() else None
            out[arch] = dict(returncode=proc.returncode, summary=stdout.strip().splitlines()[-1] if stdout.strip() else "",
                             result=result, stderr=stderr)
    return out
