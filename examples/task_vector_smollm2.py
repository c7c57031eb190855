"""SmolLM2-135M, country → capital: the paper's text-only protocol on real weights, in two prompt templates.

    python examples/task_vector_smollm2.py [template ...]      # default: qa qa_space

For each template: the mean 5-shot text-ICL task vector from val, a layer sweep on val, then no-context, 5-shot ICL
and the patched contextless queries on the 100 test items (first-token and exact-match accuracy). About 1 minute per
template on 2 CPU cores; the numbers are in docs/task_vectors.md.
"""

import sys
import time

import pandas as pd

import tv_lens as tvl
from tv_lens.offline import load_smollm2

templates = sys.argv[1:] or ["qa", "qa_space"]
hf_model, tokenizer = load_smollm2()
model = tvl.HookedMultimodalModel.from_hf(hf_model, tokenizer=tokenizer)
task = tvl.tasks.load("country-capital")

for template in templates:
    start = time.time()
    prompts = tvl.prompts.icl(task.val, n_shots=5, pool=task.train, seed=0, template=template)
    print(f"\n[{template}] first prompt:\n{prompts[0].render()}")
    vec = tvl.extract_task_vector(model, prompts, task=task.name, progress=False)
    sweep = tvl.layer_sweep(model, vec, task, template=template, progress=False)
    result = tvl.evaluate(model, task, ["no_context", "base", "patch"], vector=vec, layer=sweep.best,
                          max_new_tokens=6, template=template, progress=False)
    table = pd.DataFrame({"first token": result.table()[task.name],
                          "exact match": result.table("exact_match")[task.name]})
    print(f"best val layer {sweep.best}")
    print(table.round(2).to_string())
    patched = result.predictions.query("method == 'patch'")
    print("patched answers:", [a.strip().split("\n")[0] for a in patched.answer.head(6)], "labels:",
          patched.label.head(6).tolist())
    print(f"{time.time() - start:.0f}s")
