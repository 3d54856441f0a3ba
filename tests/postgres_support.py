"""A real PostgreSQL for the archive tests, from the Debian package (deploy/dev/system-packages.sh).

initdb and postgres refuse to run as root, and CI runs as root: then the server runs as ``nobody`` in a
fresh folder under /tmp that nobody owns, on a free loopback port, with trust authentication for that
port only (the folder and the port are the test's; nothing else on the machine is touched).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from broker import free_port

USER = "archive"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self, *, durable: bool = False) -> None:
        """durable: fsync on, as in production (the bench); tests skip the fsyncs."""
        self.durable = durable
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: run `bash deploy/dev/system-packages.sh`")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="archive-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            # setpriv keeps the environment and needs no PAM session (runuser would).
            self._as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
            shutil.chown(self.root, "nobody", "nogroup")
        self.root.chmod(0o700)

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._as, *command], cwd=self.root, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        if not self.durable:
            options += " -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
