"""DVC remote on a real S3 server (SeaweedFS on loopback): push, wipe, pull byte-identical,
a second clone that has nothing to reproduce, and the faults a team meets (server down
mid-way, wrong credentials), with every object kept under the configured prefix."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.repo import run, stages_run
from policytune.tools.s3local import SeaweedFS, configure_dvc_remote

pytestmark = pytest.mark.slow

PREFIX = "team/policytune"


def tracked_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC put under its cache (data/, models/ outputs); the train stage's
    resume scratch (models/checkpoints, git-ignored, not an out) is not an artifact."""
    out = {}
    for top in ("data", "models"):
        for p in sorted((repo / top).rglob("*")):
            rel = p.relative_to(repo).as_posix()
            if p.is_file() and ".gitignore" not in p.name and not rel.startswith("models/checkpoints/"):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def dvc_cached_paths(repo: Path) -> list[Path]:
    """Workspace paths of cached outputs (those `dvc pull` restores)."""
    lines = run(["dvc", "ls", "--dvc-only", "-R", "."], repo).stdout.split()
    # cache: false outputs (stats, metrics) live in git, not in the DVC cache
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], cwd=repo, input="\n".join(lines),
                             capture_output=True, text=True).stdout.split()
    return [repo / line for line in ignored]


@pytest.fixture
def server(tmp_path):
    s = SeaweedFS(tmp_path / "s3", bucket="dvc").start()
    yield s
    s.stop()


def test_push_wipe_pull_and_second_clone(built, tmp_path, server):
    repo = tmp_path / "repo"
    shutil.copytree(built, repo, symlinks=True)
    env = server.env()
    configure_dvc_remote(server, "store", PREFIX, cwd=repo)
    assert "secret_access_key" not in (repo / ".dvc/config").read_text()
    assert server.secret_key in (repo / ".dvc/config.local").read_text()
    run(["git", "-c", "user.name=t", "-c", "user.email=t@x.invalid", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@x.invalid", "commit", "-qm", "pipeline run"], repo)

    before = tracked_outputs(repo)
    run(["dvc", "push"], repo, env=env)

    # Wipe workspace outputs and the local cache, then pull everything back.
    shutil.rmtree(repo / ".dvc/cache")
    for p in dvc_cached_paths(repo):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    run(["dvc", "pull"], repo, env=env)
    after = tracked_outputs(repo)
    missing = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not missing and not changed, (missing[:5], changed[:5])
    status = run(["dvc", "status", "-c"], repo, env=env).stdout
    assert "in sync" in status, status

    # Nothing outside the configured prefix.
    keys = [o["Key"] for page in server.client().get_paginator("list_objects_v2").paginate(Bucket="dvc")
            for o in page.get("Contents", [])]
    assert keys and all(k.startswith(PREFIX + "/") for k in keys), [k for k in keys if not k.startswith(PREFIX)][:5]

    # A second clone pulls the same artifacts; repro then has nothing to do.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    shutil.copy(repo / ".dvc/config.local", clone / ".dvc/config.local")
    run(["dvc", "pull"], clone, env=env)
    p = run(["dvc", "repro"], clone, env=env)
    assert stages_run(p.stdout) == [], p.stdout
    assert tracked_outputs(clone) == before


def test_wrong_credentials_and_server_down_give_clear_errors(built, tmp_path, server):
    repo = tmp_path / "repo"
    shutil.copytree(built, repo, symlinks=True)
    configure_dvc_remote(server, "store", PREFIX, cwd=repo)

    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", "not-the-secret"], repo)
    p = run(["dvc", "push"], repo, check=False, timeout=300)
    assert p.returncode != 0
    err = (p.stdout + p.stderr).lower()
    assert "signature" in err or "forbidden" in err or "access denied" in err or "403" in err, err[-2000:]
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", server.secret_key], repo)

    # Server stopped mid-way: push fails clearly; after a restart the rerun completes.
    server.stop()
    p = run(["dvc", "push"], repo, check=False, timeout=300, env={"AWS_MAX_ATTEMPTS": "2"})
    assert p.returncode != 0
    err = (p.stdout + p.stderr).lower()
    assert "connect" in err or "endpoint" in err or "unable" in err, err[-2000:]
    server.start()
    run(["dvc", "push"], repo, timeout=600)
    status = run(["dvc", "status", "-c"], repo).stdout
    assert "in sync" in status, status
