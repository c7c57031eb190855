"""SmolLM2-135M, country → capital: CIE top heads, and a function vector against the residual task vector.

    python examples/heads_smollm2.py [n_cie_prompts=30] [k_heads=10]

About 10 minutes on 2 CPU cores (the CIE itself about 100 s); the numbers are in docs/heads.md.
"""

import sys
import time

import tv_lens as tvl
from tv_lens import heads
from tv_lens.offline import load_smollm2

n_cie = int(sys.argv[1]) if len(sys.argv) > 1 else 30
k = int(sys.argv[2]) if len(sys.argv) > 2 else 10
start = time.time()
hf_model, tokenizer = load_smollm2()
model = tvl.HookedMultimodalModel.from_hf(hf_model, tokenizer=tokenizer)
task = tvl.tasks.load("country-capital")
prompts = tvl.prompts.icl(task.val, n_shots=5, pool=task.train)

means = heads.mean_head_activations(model, prompts, task=task.name, progress=False)
t0 = time.time()
cie = heads.causal_indirect_effect(model, prompts[:n_cie], means=means, progress=False)
print(f"CIE on {n_cie} shuffled-label prompts: {time.time() - t0:.0f}s; unpatched p(answer) "
      f"{float(cie.base_prob.mean()):.4f}")
print(cie.to_frame().head(15).round(4).to_string())

top = cie.top_heads(k)
fv = heads.function_vector(model, means, top, task=task.name)
vec = tvl.extract_task_vector(model, prompts, layers="all", task=task.name, progress=False)
fv_sweep = tvl.layer_sweep(model, fv, task, mode="add", progress=False)
tv_sweep = tvl.layer_sweep(model, vec, task, progress=False)
print("fv_add val accuracy by layer:", fv_sweep.accuracy_by_layer().round(2).to_dict())
print("patch val accuracy by layer:", tv_sweep.accuracy_by_layer().round(2).to_dict())
print(f"best layers: fv_add {fv_sweep.best}, patch {tv_sweep.best}")
result = tvl.evaluate(model, task, ["no_context", "base", "patch", "fv_add", "heads_patch"],
                      vectors={"patch": vec, "fv_add": fv, "heads_patch": means.select(top)},
                      layer={"patch": tv_sweep.best, "fv_add": fv_sweep.best}, max_new_tokens=1, progress=False)
print(result.table().round(3).to_string())
print(f"total {time.time() - start:.0f}s")
