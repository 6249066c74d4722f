"""DVC remote on a real S3 server (SeaweedFS on loopback): the faults a team meets (wrong
credentials, server down mid-way) give clear errors and a rerun completes. The working flow
(push, a second clone pulls byte-identical, `dvc status` clean) is tests/e2e/test_team.py."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers.repo import run
from policytune.tools.s3local import SeaweedFS, configure_dvc_remote

pytestmark = pytest.mark.slow

PREFIX = "team/policytune"


@pytest.fixture
def server(tmp_path):
    s = SeaweedFS(tmp_path / "s3", bucket="dvc").start()
    yield s
    s.stop()


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
