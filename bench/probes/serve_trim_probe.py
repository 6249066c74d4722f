"""Trimming probe: Chatbot.build_prompt time on the real student tokenizer (8192 context), no model.
python trim_probe.py ROOT MODULE CASE   (CASE: turns2001 | mib1)"""
import json, sys, time
root, module, case = sys.argv[1:4]
sys.path.insert(0, root)
import importlib
chat = importlib.import_module(module)
from transformers import AutoTokenizer

sys.path.insert(0, __import__("os").path.dirname(__file__))
from serve_probes import mib_history  # noqa: E402
tok = AutoTokenizer.from_pretrained("/tmp/after/models/student")
bot = chat.Chatbot(model=None, tokenizer=tok, engine=None, context_tokens=8192)
calls = []
real = bot.encode
bot.encode = lambda m: (calls.append(len(m)), real(m))[1]
if case == "turns2001":
    msgs = []
    for i in range(2000):
        msgs += [{"role": "user", "content": f"Question number {i} about the travel policy?"},
                 {"role": "assistant", "content": f"Answer number {i} about the travel policy."}]
else:  # the 1 MiB body of serve_probes.py p5
    msgs = mib_history()
msgs.append({"role": "user", "content": "Who approves annual leave requests?"})
t0 = time.monotonic()
p = bot.build_prompt(msgs, max_new_tokens=4)
print(json.dumps({"root": root, "case": case, "messages": len(msgs), "seconds": round(time.monotonic() - t0, 3),
                  "renders": len(calls), "messages_rendered": sum(calls), "dropped": p.dropped, "prompt_tokens": len(p.ids)}))
