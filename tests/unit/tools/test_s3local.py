"""The local S3 remote (real SeaweedFS on 127.0.0.1): the generated key reaches only its bucket
and prefix, secret files are 0600 from the moment they exist, and ``stop`` never signals a
process a stale pid file names."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.tools import s3local
from policytune.core.http import free_port
from policytune.tools.s3local import SeaweedFS, configure_dvc_remote, normalize_prefix

ADMIN = {"name": "test-admin", "credentials": [{"accessKey": "TESTADMINKEY", "secretKey": "test-admin-secret"}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def denied(call) -> bool:
    try:
        call()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("AccessDenied", "InvalidAccessKeyId", "403") or status == 403
    return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=["team/x", ""], ids=["prefix", "bucket-wide"])
def scoped(request, tmp_path):
    """The project key scoped to dvc[/team/x], plus a test-only admin that owns bucket 'other'."""
    s = SeaweedFS(tmp_path / "s3", bucket="dvc", prefix=request.param, extra_identities=[ADMIN]).start(timeout_s=60)
    try:
        admin = s.client("TESTADMINKEY", "test-admin-secret")
        admin.create_bucket(Bucket="other")
        admin.put_object(Bucket="other", Key="secret.txt", Body=b"not yours")
        admin.put_object(Bucket="dvc", Key="outside/x", Body=b"outside the prefix")
        yield s, admin
    finally:
        s.stop()


def test_key_reaches_only_its_bucket_and_prefix(scoped):
    s, admin = scoped
    me = s.client()
    key = f"{s.prefix}/files/md5/ab/cdef" if s.prefix else "files/md5/ab/cdef"
    me.put_object(Bucket="dvc", Key=key, Body=b"payload")
    assert me.get_object(Bucket="dvc", Key=key)["Body"].read() == b"payload"
    listed = [o["Key"] for o in me.list_objects_v2(Bucket="dvc", Prefix=key.rsplit("/", 1)[0]).get("Contents", [])]
    assert listed == [key]

    # Another bucket: no read, write or listing; bucket creation/deletion and policies refused.
    assert denied(lambda: me.get_object(Bucket="other", Key="secret.txt"))
    assert denied(lambda: me.put_object(Bucket="other", Key="mine", Body=b"x"))
    assert denied(lambda: me.list_objects_v2(Bucket="other"))
    assert denied(lambda: me.create_bucket(Bucket="newbucket"))
    assert denied(lambda: me.delete_bucket(Bucket="other"))
    assert denied(lambda: me.put_bucket_policy(Bucket="dvc", Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
                                                "Resource": "arn:aws:s3:::dvc/*"}]})))
    assert [b["Name"] for b in me.list_buckets().get("Buckets", [])] == ["dvc"]
    assert "other" in [b["Name"] for b in admin.list_buckets()["Buckets"]]
    assert admin.get_object(Bucket="other", Key="secret.txt")["Body"].read() == b"not yours"  # untouched

    if s.prefix:  # the same bucket outside the prefix (and a sibling that shares its first letters)
        assert denied(lambda: me.get_object(Bucket="dvc", Key="outside/x"))
        assert denied(lambda: me.put_object(Bucket="dvc", Key="outside/y", Body=b"x"))
        assert denied(lambda: me.put_object(Bucket="dvc", Key=s.prefix + "zzz/y", Body=b"x"))
        assert denied(lambda: me.delete_object(Bucket="dvc", Key="outside/x"))

    ident = json.loads((s.root / "s3.json").read_text())["identities"][0]
    assert "Admin" not in ident["actions"] and all(":" in a for a in ident["actions"]), ident["actions"]
    # Nothing anonymous, and the filer HTTP port (which bypasses S3 auth) wants a JWT.
    for url in (f"{s.endpoint}/dvc/{key}", f"http://127.0.0.1:{s.ports['filer']}/buckets/dvc/{key}"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code in (401, 403), url


def test_aws_keys_in_the_environment_do_not_become_an_admin(tmp_path, monkeypatch):
    # weed mini turns AWS_ACCESS_KEY_ID/SECRET into an extra admin identity when it inherits them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVADMINKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-admin-secret")
    with SeaweedFS(tmp_path / "s3", bucket="dvc") as s:
        intruder = s.client("ENVADMINKEY", "env-admin-secret")
        assert denied(lambda: intruder.create_bucket(Bucket="envmade"))
        assert denied(lambda: intruder.list_objects_v2(Bucket="dvc"))
    assert not s.running()


def test_secret_files_are_0600_from_creation(tmp_path, monkeypatch):
    old_umask = os.umask(0)  # a plain open() would now create 0666 files
    writes: list[tuple[str, int]] = []
    real_write = os.write

    def checked_write(fd, data):
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_IMODE(os.fstat(fd).st_mode)))
        return real_write(fd, data)

    monkeypatch.setattr(s3local.os, "write", checked_write)
    try:
        s = SeaweedFS(tmp_path / "s3", bucket="dvc", prefix="team/x").start(timeout_s=60)
        try:
            monkeypatch.setattr(s3local.os, "write", real_write)
            written = {Path(p).name for p, _ in writes}
            assert {"credentials.json", "s3.json", "security.toml", "weed.pid"} <= written, writes
            assert all(m == 0o600 for _, m in writes), writes  # at the moment of every write
            for name in ("credentials.json", "s3.json", "security.toml", "weed.pid", "weed.log"):
                assert mode(s.root / name) == 0o600, name
            assert mode(s.root) == 0o700
            assert s.secret_key in (s.root / "credentials.json").read_text()

            repo = tmp_path / "repo"
            repo.mkdir()
            subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True,
                           env=ENV, timeout=120)
            local = repo / ".dvc/config.local"
            seen: list[int] = []
            from dvc.config import Config
            real_save = Config._save_config

            def save(self, level, conf):  # DVC's own write of config.local: mode just before it
                if level == "local":
                    seen.append(mode(local))
                return real_save(self, level, conf)

            monkeypatch.setattr(Config, "_save_config", save)
            configure_dvc_remote(s, "store", "team/x/dvc", cwd=repo)
            monkeypatch.setattr(Config, "_save_config", real_save)
            assert seen == [0o600] and mode(local) == 0o600
            assert s.secret_key in local.read_text()
            assert "secret_access_key" not in (repo / ".dvc/config").read_text()
            # DVC's own CLI rewrites config.local in place: it stays 0600.
            subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "store", "region",
                            "us-east-1"], cwd=repo, check=True, env=ENV, timeout=120)
            assert mode(local) == 0o600
            # A config.local an older version left 0644 is narrowed.
            local.chmod(0o644)
            configure_dvc_remote(s, "store", "team/x/dvc", cwd=repo)
            assert mode(local) == 0o600
            with pytest.raises(ValueError, match="outside the key's scope"):
                configure_dvc_remote(s, "store", "elsewhere", cwd=repo)
        finally:
            s.stop()
    finally:
        os.umask(old_umask)


@pytest.fixture
def bystander():
    """An unrelated live process in its own process group (so the old killpg would reach it)."""
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.kill(p.pid, 9)
        p.wait(timeout=10)


def _starttime(pid: int) -> int:
    return s3local.process_info(pid)["starttime"]


@pytest.mark.parametrize("record", ["bare-pid", "other-cmdline", "other-starttime", "other-boot"])
def test_stop_never_signals_a_process_a_stale_pid_file_names(tmp_path, bystander, record):
    root = tmp_path / "s3"
    root.mkdir()
    weed_cmd = [s3local.weed_binary(), "mini", f"-dir={root / 'data'}"]
    text = {
        "bare-pid": str(bystander.pid),  # the old format: only a pid
        "other-cmdline": json.dumps({"pid": bystander.pid, "starttime": _starttime(bystander.pid),
                                     "boot_id": s3local._boot_id(), "cmdline": weed_cmd}),
        "other-starttime": json.dumps({"pid": bystander.pid, "starttime": _starttime(bystander.pid) - 1,
                                       "boot_id": s3local._boot_id(), "cmdline": ["sleep", "60"]}),
        "other-boot": json.dumps({"pid": bystander.pid, "starttime": _starttime(bystander.pid),
                                  "boot_id": "another-boot", "cmdline": ["sleep", "60"]}),
    }[record]
    (root / "weed.pid").write_text(text)
    server = SeaweedFS(root)
    assert not server.running()
    server.stop()
    assert bystander.poll() is None, "stop() killed an unrelated process"
    assert not (root / "weed.pid").exists()


def test_stop_from_another_instance_ends_the_recorded_server(tmp_path):
    s = SeaweedFS(tmp_path / "s3", bucket="dvc").start(timeout_s=60)
    pid = s.recorded()["pid"]
    try:
        other = SeaweedFS(tmp_path / "s3")  # what `s3local stop` in another process sees
        assert other.running()
        other.stop()
        info = s3local.process_info(pid)
        assert info is None or info["state"] in ("Z", "X")
        assert not other.running() and not s.pid_file.exists()
    finally:
        s.stop()
        if s._proc is not None:
            s._proc.wait(timeout=10)  # reap the zombie the other instance left
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{s.endpoint}/healthz", timeout=2)


def test_cli_start_remote_push_pull_stop(tmp_path):
    """The `make remote-up` / `remote-down` path with the default prefix scope: DVC push and
    pull work with the scoped key; a remote outside the scope is refused."""
    repo = tmp_path / "repo"
    repo.mkdir()
    py = [sys.executable, "-m"]
    run = lambda *a, **kw: subprocess.run([*a], cwd=repo, env={**ENV, "PYTHONPATH": str(ROOT)},  # noqa: E731
                                          capture_output=True, text=True, timeout=180, **kw)
    d, port = str(tmp_path / "s3"), str(free_port())
    assert run(*py, "dvc", "init", "--no-scm", "-q").returncode == 0
    try:
        p = run(*py, "policytune.tools.s3local", "start", "--dir", d, "--port", port)
        assert p.returncode == 0 and "key scoped to policytune/dvcstore/" in p.stdout, p.stderr[-2000:]
        p = run(*py, "policytune.tools.s3local", "start", "--dir", d, "--port", port)
        assert "already running" in p.stdout
        p = run(*py, "policytune.tools.s3local", "remote", "--dir", d, "--port", port)
        assert p.returncode == 0, p.stderr[-2000:]
        assert mode(repo / ".dvc/config.local") == 0o600
        p = run(*py, "policytune.tools.s3local", "remote", "--dir", d, "--port", port, "--prefix", "elsewhere")
        assert p.returncode == 2 and "outside the key's scope" in p.stderr
        (repo / "blob.bin").write_bytes(os.urandom(4096))
        assert run(*py, "dvc", "add", "-q", "blob.bin").returncode == 0
        p = run(*py, "dvc", "push", "-r", "local-s3")
        assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
        (repo / "blob.bin").unlink()
        subprocess.run(["rm", "-rf", str(repo / ".dvc/cache")], check=True)
        p = run(*py, "dvc", "pull", "-r", "local-s3")
        assert p.returncode == 0 and (repo / "blob.bin").stat().st_size == 4096, (p.stdout + p.stderr)[-2000:]
    finally:
        p = run(*py, "policytune.tools.s3local", "stop", "--dir", d)
    assert p.returncode == 0 and not SeaweedFS(Path(d)).running()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab/.*-_ \n%?#:"), max_size=12))
def test_prefix_is_normalized_or_refused(prefix):
    try:
        p = normalize_prefix(prefix)
    except ValueError:
        return
    s = SeaweedFS(Path("/nonexistent"), bucket="dvc", prefix=prefix)
    assert s.prefix == p and not p.startswith("/") and not p.endswith("/")
    assert all(seg not in ("", ".", "..") for seg in p.split("/")) if p else True
    for action in s.actions():  # only the trailing wildcard; nothing that widens the scope
        body = action.split(":", 1)[1]
        assert "*" not in body[:-1] and body.startswith("dvc"), action
        assert not any(c in body for c in " \n%?#:")


def test_generated_secrets_never_read_as_a_command_line_option():
    """A secret is typed into ``dvc remote modify ... secret_access_key <secret>``; one that
    starts with ``-`` is taken for an option there (CI saw it with token_urlsafe: 1 in 64)."""
    from policytune.tools.s3local import new_secret

    seen = [new_secret() for _ in range(2000)]
    assert all(len(s) == 40 and s.isalnum() and s.isascii() for s in seen)
    assert len(set(seen)) == len(seen)
