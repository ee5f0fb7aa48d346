"""A real, throw-away PostgreSQL server on loopback for the multi-machine tests (Debian's binaries).

:func:`postgres_server` finds ``initdb``/``pg_ctl`` under ``/usr/lib/postgresql/*/bin`` (or on
``PATH``), creates a cluster in a fresh temporary folder, starts it on a free port of 127.0.0.1 with
its unix socket in that folder, creates a role with a password and a database, and yields the
SQLAlchemy URL. As root it runs the server as the ``postgres`` system user (PostgreSQL refuses to
run as root). When no binaries are found it raises: CI installs them (``apt-get install postgresql``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PASSWORD = "pw-Secret-42"  # the tests check that it never appears in any output


def find_bin_dir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[-2].split(".") if x.isdigit()], reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")) and os.path.exists(os.path.join(candidate, "pg_ctl")):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries not found (looked for /usr/lib/postgresql/*/bin/initdb and "
                       "initdb on PATH). Install them: apt-get install -y --no-install-recommends postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server(db: str = "optuna", user: str = "tuner") -> Iterator[str]:
    """Start a server, yield ``postgresql+psycopg2://user:PASSWORD@127.0.0.1:PORT/db``, stop and delete it."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="optkit_pg_"))
    as_root = os.geteuid() == 0
    if as_root:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
        return subprocess.run(full, check=check, capture_output=True, text=True, cwd=root, timeout=120)

    data, port = root / "data", _free_port()
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=100"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "-t", "60",
            "start")
        psql = [str(bin_dir / "psql"), "-h", str(root), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        run(*psql, "-c", f"CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        run(*psql, "-c", f"CREATE DATABASE {db} OWNER {user}")
        yield f"postgresql+psycopg2://{user}:{PASSWORD}@127.0.0.1:{port}/{db}"
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.cmd}: {exc.stderr}\n{log[-2000:]}") from None
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``url`` (its role may create databases); returns its URL.

    Each test that needs an empty database (a first start, a budget counted from zero) gets its own.
    """
    import psycopg2
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    conn = psycopg2.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password,
                            dbname=parts.database)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return parts.set(database=name).render_as_string(hide_password=False)
