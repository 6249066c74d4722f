"""Issue-17 server probes against a server checkout (old or new), bounded, loopback only.

python probes.py OUT.json --root ROOT --module MOD --model-dir D --adapter-dir A [--serve-arg=--max-messages=100000] [--only p4,p5]
"""
import argparse, http.client, json, os, re, socket, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path


def start(args, log):
    cmd = [sys.executable, "-m", args.module, "--port", "0", "--no-rag", "--model-dir", args.model_dir,
           "--adapter-dir", args.adapter_dir, "--max-new-tokens", "16", "--max-tokens-limit", "256"] + args.serve_arg
    env = {**os.environ, "PYTHONPATH": args.root, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=args.root, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    line = p.stdout.readline()
    m = re.search(r"on http://([\d.]+):(\d+)/", line)
    if not m:
        p.kill(); raise SystemExit(f"no server: {line} {open(log).read()[-2000:]}")
    return p, m.group(1), int(m.group(2))


def req(host, port, method, path, body=None, headers=None, timeout=60, raw_body=None):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
        h = {"Content-Type": "application/json"} if headers is None else headers
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        out = r.read()
        try:
            js = json.loads(out)
        except Exception:
            js = out[:200].decode("utf-8", "replace")
        return {"status": r.status, "body": js, "s": round(time.monotonic() - t0, 3)}
    except Exception as e:
        return {"status": None, "exception": type(e).__name__, "s": round(time.monotonic() - t0, 3)}
    finally:
        conn.close()


def stats(h, p):
    return req(h, p, "GET", "/healthz")["body"]["stats"]


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def text_of(r):
    try:
        return r["body"]["choices"][0]["message"]["content"]
    except Exception:
        return None


Q = "Who approves annual leave requests?"


def p1_same_batch(h, p):
    alone = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q}], "max_tokens": 48})
    res = {}

    def normal():
        conn = http.client.HTTPConnection(h, p, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": Q}],
                     "max_tokens": 48, "stream": True}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        pieces, err = [], None
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if "error" in c:
                err = c["error"]["message"]
            for ch in c.get("choices", []):
                if ch["delta"].get("content"):
                    pieces.append(ch["delta"]["content"])
                    if len(pieces) == 1:
                        started.set()
        res["normal"] = "".join(pieces)
        res["normal_error"] = err
    started = threading.Event()
    t = threading.Thread(target=normal); t.start()
    started.wait(60)
    ab = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
             "max_tokens": 8, "temperature": 1e-300})
    t.join(120)
    s = stats(h, p)
    return {"alone": text_of(alone), "together": res.get("normal"), "normal_error": res.get("normal_error"),
            "identical": res.get("normal") == text_of(alone) and not res.get("normal_error"),
            "abusive_status": ab.get("status"), "abusive_exception": ab.get("exception"),
            "abusive_body": ab.get("body"), "peak_batch": s.get("peak_batch")}


def p2_seed(h, p):
    r = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q}], "max_tokens": 4,
            "temperature": 1.0, "seed": 2 ** 70})
    return r


def p3_burst(h, p, n=50):
    gate = threading.Barrier(n)
    out = [None] * n

    def one(i):
        conn = http.client.HTTPConnection(h, p, timeout=120)
        try:
            gate.wait(60)
            conn.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": f"{Q} {i}"}],
                         "max_tokens": 4}), {"Content-Type": "application/json"})
            r = conn.getresponse(); r.read(); out[i] = str(r.status)
        except Exception as e:
            out[i] = type(e).__name__
        finally:
            conn.close()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    [t.start() for t in ts]; [t.join(200) for t in ts]
    return {"outcomes": dict(Counter(out)), "wall_s": round(time.monotonic() - t0, 2)}


def turns(n, q=Q, long=False):
    m = []
    for i in range(n):
        m += [{"role": "user", "content": f"Question number {i} about the travel policy?"},
              {"role": "assistant", "content": f"Answer number {i} about the travel policy."}]
    return m + [{"role": "user", "content": q}]


def p4_2001_turns(h, p):
    msgs = turns(2000)
    r = req(h, p, "POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4}, timeout=300)
    r.pop("body", None) if r.get("status") == 200 else None
    return {"messages": len(msgs), **r}


def mib_history(limit: int = (1 << 20) - 200) -> list[dict]:
    """Short user/assistant turns up to ~1 MiB of JSON: the body of probe p5 (and serve_trim_probe)."""
    msgs, size, i = [], 0, 0
    while True:
        m = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        add = len(json.dumps(m))
        if size + add > limit:
            return msgs
        msgs += m; size += add; i += 1


def p5_1mib(h, p, pid, client_timeout=20, watch=20):
    msgs = mib_history()
    msgs.append({"role": "user", "content": Q})
    body = json.dumps({"messages": msgs, "max_tokens": 4})
    assert len(body) <= 1 << 20, len(body)
    c0 = cpu_s(pid)
    r = req(h, p, "POST", "/v1/chat/completions", raw_body=body, timeout=client_timeout)
    c1 = cpu_s(pid)
    time.sleep(watch)  # the client has gone (or got its answer): does the server keep burning CPU?
    c2 = cpu_s(pid)
    alive = req(h, p, "GET", "/healthz", timeout=10)
    if r.get("status") == 200:
        r.pop("body")
    return {"body_bytes": len(body), "messages": len(msgs), **r, "server_cpu_s_during": round(c1 - c0, 2),
            f"server_cpu_s_in_{watch}s_after_client_left": round(c2 - c1, 2),
            "healthz_after": alive.get("status"), "healthz_s": alive.get("s")}


def p6_cross_origin(h, p):
    before = stats(h, p)["submitted"]
    r = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q}], "max_tokens": 4},
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    ran = stats(h, p)["submitted"] - before
    r2 = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q}], "max_tokens": 4},
             headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    ran2 = stats(h, p)["submitted"] - before - ran
    return {"text_plain_foreign_origin": {"status": r.get("status"), "generation_ran": ran},
            "json_foreign_origin": {"status": r2.get("status"), "generation_ran": ran2}}


def p7_host(h, p):
    g = req(h, p, "GET", "/v1/models", headers={"Host": "evil.example:8000"})
    before = stats(h, p)["submitted"]
    po = req(h, p, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q}], "max_tokens": 4},
             headers={"Content-Type": "application/json", "Host": "evil.example:8000"})
    return {"GET_/v1/models": g.get("status"), "POST": po.get("status"), "generation_ran": stats(h, p)["submitted"] - before}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--root"); ap.add_argument("--module")
    ap.add_argument("--model-dir"); ap.add_argument("--adapter-dir")
    ap.add_argument("--serve-arg", action="append", default=[])
    ap.add_argument("--only", default="p1,p2,p3,p4,p5,p6,p7")
    a = ap.parse_args()
    a.serve_arg = [x for s in a.serve_arg for x in s.split("=", 1)]
    proc, h, p = start(a, a.out + ".log")
    out = {"root": a.root, "module": a.module, "serve_args": a.serve_arg}
    try:
        only = a.only.split(",")
        for name, fn in [("p1_temperature_1e-300_same_batch", lambda: p1_same_batch(h, p)),
                         ("p2_seed_2**70", lambda: p2_seed(h, p)),
                         ("p6_cross_origin", lambda: p6_cross_origin(h, p)),
                         ("p7_host_header", lambda: p7_host(h, p)),
                         ("p3_burst_50", lambda: p3_burst(h, p)),
                         ("p4_2001_turns", lambda: p4_2001_turns(h, p)),
                         ("p5_1MiB_request", lambda: p5_1mib(h, p, proc.pid))]:
            if name.split("_")[0] in only:
                out[name] = fn()
                print(name, json.dumps(out[name])[:600], flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
