"""The `nodedb-cluster` CLI as a real child process, for multi-process tests."""

from __future__ import annotations

import asyncio
import sys

from nodedb_cluster.transport import Mtls

CLI_TIMEOUT_S = 120.0


async def run_cli(
    *args: str, timeout_s: float = CLI_TIMEOUT_S, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m nodedb_cluster.cli ARGS`, bounded; `env`: the
    child's whole environment (default: this process's)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodedb_cluster.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(), err.decode()


def cred_flags(creds: object) -> list[str]:
    """`--ca --cert --key` for mTLS credentials."""
    assert isinstance(creds, Mtls)
    return ["--ca", str(creds.ca), "--cert", str(creds.cert), "--key", str(creds.key)]
