"""TransformerLens conformance numbers: max |TL - ours| per category, the same TL script on TransformerLens's
TransformerBridge and on HookedMultimodalModel with identical weights (tiny GPT-2 and Llama with perturbed norm
weights, as in tests/test_tl_conformance.py; with ``--smollm2`` also the real SmolLM2-135M, both in eager attention).

Run: ``python benchmarks/tl_conformance.py [--smollm2]``. ``ln_final.hook_normalized`` is left out of the activation
comparison on purpose: TransformerLens's is taken before the norm's weight, ours after (docs/concepts.md).
"""
import sys
import torch, tempfile, io, contextlib, copy
import tv_lens as tvl
from tv_lens.testing.causal_lm import build_gpt2, build_llama
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoTokenizer
from transformer_lens.utilities import test_prompt
toks = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
for b, name in ((build_gpt2, "gpt2"), (build_llama, "meta-llama/Llama-3.2-1B")):
    torch.manual_seed(0); t = b(); t.model.eval()
    with torch.no_grad():
        for n, p in t.model.named_parameters():
            if "norm" in n or ".ln_" in n: p.add_(0.3 * torch.randn_like(p))
    d = tempfile.mkdtemp(); t.tokenizer.save_pretrained(d)
    br = TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(t.model), tokenizer=AutoTokenizer.from_pretrained(d))
    ours = tvl.HookedMultimodalModel.from_hf(t.model, tokenizer=t.tokenizer)
    r = {}
    with torch.no_grad():
        r["logits"] = (br(toks) - ours(toks)).abs().max().item()
        r["loss"] = abs(br(toks, return_type="loss").item() - ours(toks, return_type="loss").item())
        _, a = br.run_with_cache(toks); _, c = ours.run_with_cache(toks, names_filter=lambda n: True)
        common = sorted(set(a.keys()) & set(c.keys()) - {"ln_final.hook_normalized"})
        r[f"activations ({len(common)} shared names)"] = max((a[k] - c[k]).abs().max().item() for k in common)
        for f in ("accumulated_resid", "decompose_resid", "stack_head_results"):
            r[f] = max((getattr(a, f)(layer=-1, apply_ln=ln) - getattr(c, f)(layer=-1, apply_ln=ln)).abs().max().item() for ln in (False, True))
        r["logit_attrs"] = (a.logit_attrs(a.decompose_resid(layer=-1), tokens=torch.tensor([5])) - c.logit_attrs(c.decompose_resid(layer=-1), tokens=torch.tensor([5]))).abs().max().item()
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"]
    g = {}
    for key, m in (("tl", br), ("ours", ours)):
        g[key] = {}
        def saver(nm, key=key): return lambda grad, hook: g[key].__setitem__(nm, grad.detach().clone())
        with m.hooks(bwd_hooks=[(nm, saver(nm)) for nm in names]):
            m(toks, return_type="loss").backward()
    r["backward-hook grads"] = max((g["tl"][n] - g["ours"][n]).abs().max().item() for n in names)
    outs = []
    for m in (br, ours):
        f = io.StringIO()
        with contextlib.redirect_stdout(f), torch.no_grad(): test_prompt("Q:ab\nA:", "c", m, prepend_space_to_answer=False, prepend_bos=False)
        outs.append(f.getvalue())
    r["test_prompt output identical"] = outs[0] == outs[1]
    print(name, {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in r.items()})

if "--smollm2" in sys.argv:
    m, tok = tvl.load_smollm2()
    d = tempfile.mkdtemp(); tok.save_pretrained(d)
    br = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=copy.deepcopy(m),
                                             tokenizer=AutoTokenizer.from_pretrained(d))
    m.set_attn_implementation("eager")   # TL's bridge forces eager attention
    ours = tvl.HookedMultimodalModel.from_hf(m, tokenizer=tok)
    toks = ours.to_tokens("Q:France\nA:Paris\n\nQ:Spain\nA:")
    with torch.no_grad():
        _, a = br.run_with_cache(toks); _, c = ours.run_with_cache(toks, names_filter=lambda n: True)
        common = sorted(set(a.keys()) & set(c.keys()) - {"ln_final.hook_normalized"})
        print("SmolLM2-135M", {"logits": f"{(br(toks) - ours(toks)).abs().max().item():.2e}",
                               f"activations ({len(common)} shared names)":
                                   f"{max((a[k] - c[k]).abs().max().item() for k in common):.2e}",
                               "decompose_resid(apply_ln)":
                                   f"{(a.decompose_resid(apply_ln=True) - c.decompose_resid(apply_ln=True)).abs().max().item():.2e}"})
