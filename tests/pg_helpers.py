"""A throwaway PostgreSQL cluster for the tests: Debian's initdb/pg_ctl on a free loopback
port and a private socket folder, started once per session. No system service is used.

As root (CI containers) the server runs as the ``postgres`` user via ``runuser``; otherwise
as the current user. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from storage.db import Database
from tests.dicom_helpers import free_port


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: install the "
            "Debian package postgresql (.ci/system-deps does)"
        )
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="tamperscan-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self._names = itertools.count(1)
        self.template = "tamperscan_template"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {self.template}")
        template = Database(self.url(self.template))
        template.migrate()
        template.dispose()

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def url(self, name: str, password: str | None = None) -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{name}"

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database (a copy of the migrated template, or empty); returns its URL."""
        name = f"t{next(self._names)}"
        with self._admin() as conn:
            template = f" TEMPLATE {self.template}" if migrated else ""
            conn.execute(f"CREATE DATABASE {name}{template}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
