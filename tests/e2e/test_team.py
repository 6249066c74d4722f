"""Two people share the project through an S3 remote (a real SeaweedFS on loopback), with the
commands of the README's "Working as a team" section and nothing more (no blanket `git add`).

Person A runs the pipeline (the session's `built` repo: `dvc repro` on the tiny models), commits
what DVC wants committed, adds the remote and `dvc push`es. Person B clones, configures the
remote's endpoint and keys, `dvc pull`s (byte-identical to A, `dvc status` clean), tries
train.lora.r=32 as an experiment, keeps it on a branch, and `dvc metrics diff main`,
`make review BASE=main` and `dvc exp show` all show the change.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from policytune.tools.s3local import SeaweedFS, configure_dvc_remote
from tests.helpers.repo import VENV_BIN, dvc_written, run, stages_run

pytestmark = pytest.mark.slow

REMOTE = "s3://policytune/dvcstore"  # committed: bucket + prefix only


def git(repo: Path, *args: str):
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@x.invalid", *args], repo)


def changed_paths(repo: Path) -> list[str]:
    """`git status` as paths (untracked folders listed file by file)."""
    out = run(["git", "status", "--porcelain", "-uall"], repo).stdout
    return sorted(line[3:] for line in out.splitlines())


def commit_paths(repo: Path) -> list[str]:
    """The README's `git add dvc.lock params.yaml metrics data/stats data/eval/plots
    data/.gitignore data/*/.gitignore` (the shell glob expanded as the shell would)."""
    return ["dvc.lock", "params.yaml", "metrics", "data/stats", "data/eval/plots", "data/.gitignore",
            *sorted(p.relative_to(repo).as_posix() for p in repo.glob("data/*/.gitignore"))]


def tracked_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file under data/ and models/ except git-ignore files and the train
    stage's resume scratch (models/checkpoints: git-ignored, not an out, not shared)."""
    out = {}
    for top in ("data", "models"):
        for p in sorted((repo / top).rglob("*")):
            rel = p.relative_to(repo).as_posix()
            if p.is_file() and p.name != ".gitignore" and not rel.startswith("models/checkpoints/"):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_two_people_share_the_project_through_s3(built, tmp_path):
    origin = tmp_path / "origin.git"  # the team's git server
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(built, a, symlinks=True)
    (a / "e2e_repro.log").unlink(missing_ok=True)  # the fixture's own log, not the project's

    # --- person A: after `make run`, git shows only what DVC wrote (and A's params), nothing staged
    assert run(["git", "diff", "--cached", "--name-only"], a).stdout == "", "core.autostage must be off"
    status = changed_paths(a)
    assert "dvc.lock" in status and "metrics/eval.json" in status, status
    assert all(dvc_written(p) or p == "params.yaml" for p in status), status
    git(a, "add", *commit_paths(a))
    git(a, "commit", "-qm", "pipeline run on the tiny models")
    assert changed_paths(a) == [], "the README's git add must cover everything DVC wrote"

    run(["dvc", "remote", "add", "-d", "storage", REMOTE], a)
    git(a, "add", ".dvc/config")
    git(a, "commit", "-qm", "DVC remote")
    with SeaweedFS(tmp_path / "s3", bucket="policytune", prefix="dvcstore") as server:
        configure_dvc_remote(server, "storage", "dvcstore", cwd=a)  # = make remote-up
        assert server.secret_key not in (a / ".dvc/config").read_text()
        run(["dvc", "push"], a)
        git(a, "remote", "add", "origin", str(origin))
        git(a, "push", "-q", "-u", "origin", "main")

        # --- person B: clone, endpoint and keys (never committed), pull
        run(["git", "clone", "-q", str(origin), str(b)], tmp_path)
        (b / ".venv").symlink_to(VENV_BIN.parent)  # what `make setup` leaves in a clone
        run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", server.endpoint], b)
        run(["dvc", "remote", "modify", "--local", "storage", "access_key_id", server.access_key], b)
        run(["dvc", "remote", "modify", "--local", "storage", "secret_access_key", server.secret_key], b)
        run(["dvc", "pull"], b)
        status = run(["dvc", "status"], b).stdout
        assert "Data and pipelines are up to date." in status, status
        before = tracked_outputs(a)
        assert tracked_outputs(b) == before, "dvc pull must restore A's outputs byte for byte"

        # the change: LoRA rank 16 -> 32 (params.yaml has 16), as an experiment on main
        p = run(["dvc", "exp", "run", "-n", "r32", "-S", "train.lora.r=32"], b, timeout=1800)
        ran = stages_run(p.stdout)
        assert "train" in ran and "evaluate" in ran and not {"scrape", "generate_qa", "split"} & set(ran), ran
        shown = json.loads(run(["dvc", "exp", "show", "--json"], b).stdout)
        diff = run(["dvc", "metrics", "diff", "main"], b).stdout
        best = [line.split() for line in diff.splitlines() if "best_eval_loss" in line]
        assert best and best[0][0] == "metrics/train.json" and best[0][2] != best[0][3], diff

        git(b, "checkout", "-q", "-b", "lora-r32")
        git(b, "add", *commit_paths(b))
        git(b, "commit", "-qm", "train.lora.r=32")
        assert changed_paths(b) == [], changed_paths(b)
        run(["make", "review", "BASE=main"], b)
        comment = (b / "review/comment.md").read_text()
        shown_after = run(["dvc", "exp", "show", "-n", "2", "--md"], b).stdout
        run(["dvc", "push"], b)
        git(b, "push", "-q", "-u", "origin", "lora-r32")
        assert "in sync" in run(["dvc", "status", "-c"], b).stdout

    # dvc exp show, right after the run: main, and under it the experiment with r=32
    lora_r = {e.get("name"): e["data"]["params"]["params.yaml"]["data"]["train"]["lora"]["r"]
              for rev in shown for e in [rev, *[x for ex in rev.get("experiments") or [] for x in ex["revs"]]]}
    assert lora_r.get("main") == 16 and lora_r.get("r32") == 32, lora_r
    # ... and after the commit (-n 2): the branch, main, and main's experiment r32
    rows = [line.split("|")[1].strip() for line in shown_after.splitlines()[2:] if line.startswith("|")]
    assert "lora-r32" in rows and "main" in rows and any("[r32]" in r for r in rows), shown_after

    # the review comment: sticky marker, the changed param, the headline metric with both values
    assert comment.splitlines()[0] == "<!-- policytune-review -->"
    params = comment.split("### Params")[1]
    assert any([c.strip() for c in line.split("|")[2:5]] == ["train.lora.r", "16", "32"]
               for line in params.splitlines()), params
    head = comment.split("<details>")[0]
    row = next(line for line in head.splitlines() if "| best_eval_loss" in line)
    main_v, branch_v = [c.strip() for c in row.split("|")[3:5]]
    assert main_v != branch_v and main_v == best[0][2] and branch_v == best[0][3], row
    assert "plot(s) of `dvc plots diff main`" in comment and (b / "review/plots.html").exists()
