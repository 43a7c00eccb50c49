"""The drift loop a user writes by hand: full logits, log_softmax, KL at the next token.

    python -m driftscope.peers.handwritten BASE TUNED PROBES.jsonl [BATCH [DEVICE [DTYPE]]]

Plain transformers and torch, no driftscope: each prompt is rendered as
compare renders it by default (through the tokenizer's chat template when it has
one, as a user scoring an instruct model would), tokenised (left padding, so
the last column is every row's next-token position), both models
run with their full (batch, length, vocab) logits, and KL(p||q) is taken at the
last position (in float64, as driftscope does). DEVICE (cpu) and DTYPE (float32)
are what the models load to, as a user would write `.to("cuda")`. Prints one JSON line: load and loop seconds, positions, KL mean.
The benchmark runs it beside compare on the same probes.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import transformers  # noqa: F401 - the package only: `import driftscope` imports it too, before compare's clock


def render(tok, prompt: str) -> str:
    if not tok.chat_template:
        return prompt
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def main(base: str, tuned: str, probes: str, batch_size: int = 16, device: str = "cpu", dtype: str = "float32") -> dict:
    start = time.perf_counter()
    # Imported inside the load's time, as compare's loader imports them: the first import of the
    # Auto classes (about 0.4 s) is part of either side's load, not of one side's start-up only.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    prompts = [render(tok, row["prompt"]) for row in map(json.loads, open(probes)) if "prompt" in row]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    p_model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device).eval()
    q_model = AutoModelForCausalLM.from_pretrained(tuned, dtype=getattr(torch, dtype)).to(device).eval()
    loaded = time.perf_counter()
    kls = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=not tok.chat_template).to(device)  # a rendered template has its own
            logp = torch.log_softmax(p_model(**enc).logits[:, -1].double(), -1)
            logq = torch.log_softmax(q_model(**enc).logits[:, -1].double(), -1)
            kls.append((logp.exp() * (logp - logq)).sum(-1).cpu())
    done = time.perf_counter()
    kl = torch.cat(kls)
    return {"load_s": loaded - start, "seconds": done - loaded, "positions": len(kl), "kl_mean": kl.mean().item()}


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], args[1], args[2], *(int(a) for a in args[3:4]), *args[4:6])))
