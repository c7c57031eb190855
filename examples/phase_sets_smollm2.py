"""Measured phase sets on the real SmolLM2-135M (docs/lens.md): the input set, Figure 3 peaks, A.4 instruction peaks.

Run: python examples/phase_sets_smollm2.py  (about 3 minutes on 2 CPU cores)
"""
import warnings; warnings.simplefilter("ignore")
import tv_lens as tvl
from tv_lens import lens, prompts as P
from tv_lens.offline import load_smollm2
m, tok = load_smollm2(); model = tvl.HookedMultimodalModel.from_hf(m, tokenizer=tok)
task = tvl.tasks.load("country-capital")
prompts = P.icl(task.val + task.test, n_shots=5, pool=task.train, seed=0)
inp = lens.input_token_set(model, prompts)
print("input set:", inp, inp.sources)
curves = lens.phase_curves(model, prompts, task=task, progress=False)
print(curves.peaks)
print("shows_order:", curves.shows_order(), "min_peak=0.01:", curves.shows_order(min_peak=0.01))
inst = lens.phase_curves(model, [P.instruction(task.instruction)], task=task, progress=False)
print("instruction peaks:\n", inst.peaks)
