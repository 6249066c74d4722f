"""Probe issue 17's backend bullet against a backends module file (old or new)."""
import importlib.util, json, os, sys, threading, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
for k in list(os.environ):
    if k.startswith("AWS_"): del os.environ[k]
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true",
                  AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
from tests.helpers.hostile_server import HostileServer

path = sys.argv[1]
spec = importlib.util.spec_from_file_location("backends_probe", path)
mod = importlib.util.module_from_spec(spec); sys.modules["backends_probe"] = mod; spec.loader.exec_module(mod)
CAP = float(os.environ.get("PROBE_CAP_S", "20"))
Q = [[{"role": "user", "content": "q"}]]

def run(make, mode, srv, key=None, **kw):
    key = key or mode
    box = {}
    def go():
        b = make(mode, **kw)
        try:
            c = b.chat(Q, max_new_tokens=16)[0]
            box["out"] = f"ok text={c.text[:40]!r}{'...(%d chars)' % len(c.text) if len(c.text) > 40 else ''} n_tokens={c.n_tokens} finish={c.finish_reason}"
        except BaseException as e:
            box["out"] = f"{type(e).__name__}: {str(e)[:140]}"
        box["stats"] = {k: v for k, v in b.stats.items() if k in ("retries", "attempts", "rejected", "retries_by_reason", "rejected_by_reason", "bad_usage")}
    before = srv.counts.get(key, 0)
    t0 = time.monotonic(); th = threading.Thread(target=go, daemon=True); th.start(); th.join(CAP)
    dt = time.monotonic() - t0
    out = box.get("out", f"STILL WAITING after {CAP:.0f}s")
    times = srv.times.get(key, [])
    gap = f" gap={times[-1]-times[-2]:.2f}s" if len(times) >= 2 else ""
    print(f"  {mode:15s} {dt:6.2f}s requests={srv.counts.get(key, 0) - before}{gap} -> {out} {box.get('stats', '')}", flush=True)

with HostileServer(huge_bytes=16 << 20, max_slow_s=CAP + 5) as srv:
    def oa(mode, **kw):
        cfg = mod.OpenAIConfig(base_url=srv.openai_url(mode), model="m", api_key_env="", timeout_s=kw.pop("timeout_s", 2.0),
                               max_retries=kw.pop("max_retries", 1), backoff_s=0.01, max_backoff_s=5.0, concurrency=1)
        return mod.OpenAIBackend(cfg)
    def br(mode, **kw):
        cfg = mod.BedrockConfig(model_id=mode, region="us-east-1", endpoint_url=srv.url, timeout_s=kw.pop("timeout_s", 2.0),
                                max_retries=kw.pop("max_retries", 1), backoff_s=0.01, max_backoff_s=5.0, concurrency=1)
        return mod.BedrockBackend(cfg)
    print("openai (timeout_s=2, max_retries=1, backoff_s=0.01, max_backoff_s=5):")
    for mode in ("content-number", "content-list", "content-dict", "content-null", "no-choices", "usage-bad", "cut",
                 "cut-nolength", "huge", "429-seconds", "429-date", "503-then-ok", "trickle"):
        run(oa, mode, srv)
    print("bedrock (timeout_s=2, max_retries=1):")
    for mode in ("content-number", "content-list", "content-dict", "no-choices", "usage-bad", "cut", "cut-nolength", "huge",
                 "429-seconds", "429-date", "503-then-ok", "trickle"):
        run(br, mode, srv, key="converse:" + mode)
