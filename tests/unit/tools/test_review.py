"""The PR review comment: the base-vs-fine-tuned table uses each metric's good direction; the
comment for a branch that changes train.lora.r (real dvc CLI on a small git repo) carries the
headline rows, the params change and the hidden sticky marker; --post-pr keeps one comment per
pull request (a loopback stand-in for the GitHub REST API)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from policytune.tools import review
from policytune.tools.review import eval_table


def test_eval_table_verdicts_follow_metric_direction(tmp_path):
    m = {"n": 30,
         "base": {"bertscore_f1": {"mean": 0.61}, "ref_ppl": {"mean": 40.8}, "answer_len": {"mean": 47.5},
                  "cosine": {"mean": 0.35}},
         "finetuned": {"bertscore_f1": {"mean": 0.59}, "ref_ppl": {"mean": 37.0}, "answer_len": {"mean": 30.7},
                       "cosine": {"mean": 0.33}},
         "delta": {"bertscore_f1": {"mean": -0.02, "ci_low": -0.045, "ci_high": -0.001},
                   "ref_ppl": {"mean": -3.8, "ci_low": -5.3, "ci_high": -2.5},
                   "answer_len": {"mean": -16.8, "ci_low": -26.2, "ci_high": -7.7},
                   "cosine": {"mean": -0.02, "ci_low": -0.07, "ci_high": 0.02}}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(m))
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in eval_table(path).splitlines()
            if line.startswith("| ") and not line.startswith("| metric")}
    assert rows == {"answer_len": "n/a", "bertscore_f1": "worse", "cosine": "no significant difference",
                    "ref_ppl": "better"}
    assert "n = 30 test questions" in eval_table(path)
    assert "not found" in eval_table(tmp_path / "missing.json")


def test_metrics_diff_headline_rows_first_full_table_collapsed():
    from policytune.tools.review import split_metrics_diff

    md = """| Path | Metric | main | workspace | Change |
|------|--------|------|-----------|--------|
| metrics/train.json | best_eval_loss | 2.99 | 2.98 | -0.01 |
| metrics/eval.json | delta.ref_ppl.mean | -3.8 | -3.6 | 0.2 |
| metrics/eval.json | delta.ref_ppl.ci_low | -5.2 | -5.0 | 0.2 |
| metrics/judge.json | judge_failures | 0 | 1 | 1 |
| metrics/data.json | chunks_sent | 112 | 113 | 1 |
"""
    out = split_metrics_diff(md)
    head, details = out.split("<details>")
    assert "best_eval_loss" in head and "delta.ref_ppl.mean" in head and "judge_failures" in head
    assert "ci_low" not in head and "chunks_sent" not in head
    assert "All 5 changed metrics" in details and "ci_low" in details and "chunks_sent" in details
    assert split_metrics_diff("") == "_no metric changed_"


# --- the comment for a branch that changes train.lora.r, built with the real dvc CLI ----------

DVC_YAML = {
    "stages": {
        "train": {"cmd": "true", "params": ["train"],
                  "metrics": [{"metrics/train.json": {"cache": False}}],
                  "plots": [{"metrics/train_curve/eval.json": {"cache": False, "x": "step", "y": "eval_loss"}}]},
        "evaluate": {"cmd": "true", "metrics": [{"metrics/eval.json": {"cache": False}}]},
    }
}


def _eval(ref_ppl: float, lo: float, hi: float) -> dict:
    return {"n": 12, "base.ref_ppl.mean": 40.0, "finetuned.ref_ppl.mean": 40.0 + ref_ppl,
            "delta.ref_ppl.mean": ref_ppl, "delta.ref_ppl.ci_low": lo, "delta.ref_ppl.ci_high": hi}


def _commit(repo, r: int, best: float, curve: list[float], ev: dict, msg: str) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "lora": {"r": r, "alpha": 16}}}))
    (repo / "metrics/train_curve").mkdir(parents=True, exist_ok=True)
    (repo / "metrics/train.json").write_text(json.dumps({"best_eval_loss": best, "tokens_seen": 1000 + r}))
    (repo / "metrics/train_curve/eval.json").write_text(
        json.dumps([{"step": i, "eval_loss": v} for i, v in enumerate(curve)]))
    (repo / "metrics/eval.json").write_text(json.dumps(ev))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@x.invalid"]
    subprocess.run([*git, "add", "params.yaml", "dvc.yaml", "metrics", ".dvc"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", msg], cwd=repo, check=True)


def lora_branch_repo(tmp_path):
    """main with train.lora.r=8, branch lora-r16 (checked out) with r=16 and its new metrics."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    _commit(repo, 8, 3.1681, [3.56, 3.30, 3.17], _eval(-3.8, -5.3, -2.5), "r=8")
    subprocess.run(["git", "checkout", "-qb", "lora-r16"], cwd=repo, check=True)
    _commit(repo, 16, 3.0412, [3.56, 3.21, 3.04], _eval(-4.6, -6.0, -3.1), "r=16")
    return repo


def test_comment_for_a_lora_rank_branch(tmp_path):
    repo = lora_branch_repo(tmp_path)
    out = tmp_path / "review"
    url = "https://github.com/o/r/actions/runs/1#artifacts"
    text = review.build("main", repo, out, plots_url=url).read_text()

    assert text.splitlines()[0] == review.MARKER  # hidden marker first: the sticky comment's key
    head = text.split("<details>")[0]
    rows = {c[2].strip(): c[3:6] for c in (line.split("|") for line in head.splitlines()) if len(c) > 6}
    # headline rows: main value, branch value, change
    assert [x.strip() for x in rows["best_eval_loss"]] == ["3.1681", "3.0412", "-0.1269"], rows
    assert [x.strip() for x in rows["delta.ref_ppl.mean"]] == ["-3.8", "-4.6", "-0.8"], rows
    assert "ci_low" not in head and "tokens_seen" not in head  # only in the collapsed full table
    assert "All 6 changed metrics" in text and "tokens_seen" in text.split("<details>")[1]
    params = text.split("### Params")[1].split("###")[0]
    assert any([c.strip() for c in line.split("|")[2:5]] == ["train.lora.r", "8", "16"]
               for line in params.splitlines()), params
    assert "train.epochs" not in params  # unchanged params stay out
    assert "| ref_ppl | 40.0000 | 35.4000 | -4.6000 | [-6.0000, -3.1000] | better |" in text
    assert f"1 plot(s) of `dvc plots diff main`: [the images and `plots.html`]({url})" in text
    assert (out / "plot_0.png").stat().st_size > 1000 and "plot_0.png" in (out / "plots.html").read_text()


def test_comment_is_cut_to_githubs_limit(tmp_path, monkeypatch):
    repo = lora_branch_repo(tmp_path)
    monkeypatch.setattr(review, "MAX_COMMENT_CHARS", 1500)
    text = review.build("main", repo, tmp_path / "review").read_text()
    assert len(text) <= 1500 and text.startswith(review.MARKER)
    assert "<details>" not in text and "best_eval_loss" in text  # the headline survives


# --- the sticky comment against a loopback stand-in for the GitHub REST API ------------------

class FakeGitHub:
    """Issue-comment endpoints of the GitHub REST API, in memory, on 127.0.0.1."""

    def __init__(self, token: str, comments: list[dict]):
        self.token, self.comments, self.calls = token, comments, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                u = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                fake.calls.append((self.command, u.path))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"message": "Bad credentials"})
                parts = u.path.strip("/").split("/")  # repos/o/r/issues/<n>/comments | repos/o/r/issues/comments/<id>
                if self.command == "GET" and parts[-1] == "comments":
                    q = parse_qs(u.query)
                    per, page = int(q["per_page"][0]), int(q["page"][0])
                    return self._reply(200, fake.comments[(page - 1) * per: page * per])
                if self.command == "POST" and parts[-1] == "comments":
                    c = {"id": 1000 + len(fake.comments), "body": body["body"]}
                    fake.comments.append(c)
                    return self._reply(201, c)
                if self.command == "PATCH" and parts[-2] == "comments":
                    c = next(c for c in fake.comments if c["id"] == int(parts[-1]))
                    c["body"] = body["body"]
                    return self._reply(200, c)
                return self._reply(404, {"message": "Not Found"})

            do_GET = do_POST = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_one_sticky_comment_per_pull_request(tmp_path, monkeypatch):
    others = [{"id": i, "body": f"human comment {i}"} for i in range(150)]  # the sticky lands on page 2
    with FakeGitHub("tok", others) as gh:
        first = f"{review.MARKER}\n## policytune: this branch vs `main`\nbest_eval_loss 3.04\n"
        action, cid = review.post_sticky(first, "o/r", 7, "tok", gh.url)
        assert action == "created" and [c for c in gh.calls if c[0] != "GET"] == [("POST", "/repos/o/r/issues/7/comments")]

        # the next push: the CLI edits the same comment in place
        out = tmp_path / "review"
        out.mkdir()
        (out / "comment.md").write_text(first.replace("3.04", "3.01"))
        monkeypatch.setenv("GITHUB_TOKEN", "tok")
        monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
        monkeypatch.setenv("GITHUB_API_URL", gh.url)
        gh.calls.clear()
        assert review.main(["--out", str(out), "--post-pr", "7"]) == 0
        assert ("PATCH", f"/repos/o/r/issues/comments/{cid}") in gh.calls
        assert not any(m == "POST" for m, _ in gh.calls)
        mine = [c for c in gh.comments if review.MARKER in c["body"]]
        assert len(mine) == 1 and mine[0]["id"] == cid and "3.01" in mine[0]["body"]
        assert len(gh.comments) == 151 and all(c["body"] == f"human comment {c['id']}" for c in gh.comments[:150])

        monkeypatch.setenv("GITHUB_TOKEN", "wrong")
        with pytest.raises(Exception, match="401"):
            review.main(["--out", str(out), "--post-pr", "7"])


# --- the workflow that posts it -------------------------------------------------------------

def test_workflow_posts_the_tested_comment_with_least_privilege():
    from tests.helpers.repo import REPO

    path = REPO / ".github/workflows/review.yml"
    text = path.read_text()
    wf = yaml.safe_load(text)
    assert "pull_request" in wf.get("on", wf.get(True))  # PyYAML reads the bare key `on` as True
    assert wf["permissions"] == {"contents": "read", "pull-requests": "write"}
    job = wf["jobs"]["review"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert not any("sudo" in r for r in runs)
    # the remote comes from repository secrets/variables, written only to .dvc/config.local
    assert job["env"]["AWS_SECRET_ACCESS_KEY"] == "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    assert "vars.DVC_REMOTE_URL" in text and "remote add --local" in text
    # every review command the workflow runs parses with the real CLI: one builds with the plots
    # link, one posts the sticky comment
    env = {"BASE_REF": "main", "PR_NUMBER": "7", "GITHUB_SERVER_URL": "https://github.com",
           "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "99"}
    cmds = []
    for r in runs:
        if "policytune.tools.review" in r:
            line = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], " ".join(r.split()))
            argv = shlex.split(line)
            cmds.append(review.parser().parse_args(argv[argv.index("policytune.tools.review") + 1:]))
    assert [c.post_pr for c in cmds] == [None, 7], cmds
    assert cmds[0].base == "origin/main" and cmds[0].plots_url == "https://github.com/o/r/actions/runs/99#artifacts"
    assert cmds[0].out == cmds[1].out == "review"
    assert {"BASE_REF", "PR_NUMBER"} <= set(job["env"])
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") and s["with"]["path"] == "review/"
               for s in job["steps"])
