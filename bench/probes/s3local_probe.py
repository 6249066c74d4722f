"""Local S3 probes of issue 17 against one s3local module (old path or 'new')."""
import importlib.util, json, os, stat, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
which = sys.argv[1]
if which == "new":
    from policytune.tools import s3local as m
else:
    spec = importlib.util.spec_from_file_location("old_s3local", which); m = importlib.util.module_from_spec(spec); sys.modules["old_s3local"] = m; spec.loader.exec_module(m)
from botocore.exceptions import ClientError
def ok(f):
    try: f(); return "allowed"
    except ClientError as e: return "refused(" + e.response["Error"]["Code"] + ")"
tmp = Path(tempfile.mkdtemp(prefix="probe-"))
os.environ["AWS_ACCESS_KEY_ID"] = "ENVKEY"; os.environ["AWS_SECRET_ACCESS_KEY"] = "envsecret"   # a user's shell env
s = m.SeaweedFS(tmp / "s3", bucket="dvc").start()
os.environ.pop("AWS_ACCESS_KEY_ID"); os.environ.pop("AWS_SECRET_ACCESS_KEY")
c = s.client()
acts = json.loads((s.root / "s3.json").read_text())["identities"][0]["actions"]
print("P1 key actions:", acts, "| Admin:", "Admin" in acts)
print("P1 key create_bucket('other'):", ok(lambda: c.create_bucket(Bucket="other")))
print("P1 key put into 'other':", ok(lambda: c.put_object(Bucket="other", Key="k", Body=b"x")))
print("P1 key list_buckets:", [b["Name"] for b in c.list_buckets()["Buckets"]])
e = s.client("ENVKEY", "envsecret") if which == "new" else __import__("boto3").client("s3", endpoint_url=s.endpoint, region_name="us-east-1", aws_access_key_id="ENVKEY", aws_secret_access_key="envsecret")
print("P4 inherited AWS_* env key create_bucket:", ok(lambda: e.create_bucket(Bucket="envmade")))
c.put_object(Bucket="dvc", Key="p/k", Body=b"data")
try: urllib.request.urlopen(f"http://127.0.0.1:{s.ports['filer']}/buckets/dvc/p/k", timeout=3).read(); print("P5 filer HTTP read without any key: allowed")
except Exception as ex: print("P5 filer HTTP read without any key: refused", ex)
modes = {n: oct(stat.S_IMODE((s.root / n).stat().st_mode)) for n in ("credentials.json", "s3.json")}
repo = tmp / "repo"; repo.mkdir()
subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
argvs = []; real = subprocess.run
def spy(args, *a, **kw): argvs.append(list(args)); return real(args, *a, **kw)
m.subprocess.run = spy
m.configure_dvc_remote(s, "store", "team/p", cwd=repo)
m.subprocess.run = real
modes[".dvc/config.local"] = oct(stat.S_IMODE((repo / ".dvc/config.local").stat().st_mode))
print("P2 file modes (umask %s):" % oct(os.umask(0o022)), modes)
print("P2 secret on a command line:", any(s.secret_key in " ".join(a) for a in argvs))
s.stop()
# P3: stale pid file naming an unrelated live process
bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
(s.root / "weed.pid").write_text(str(bystander.pid))
t = time.monotonic(); m.SeaweedFS(s.root).stop()
time.sleep(0.2)
print("P3 stale pid file -> unrelated 'sleep 60' %s by stop() (%.1fs)" % ("KILLED" if bystander.poll() is not None else "left alive", time.monotonic() - t))
if bystander.poll() is None: bystander.kill()
bystander.wait()
