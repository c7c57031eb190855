"""tv_lens benchmarks: ratios against the raw HF model, measured in ONE run on this machine.

    python benchmarks/run.py            # full (real SmolLM2-135M + tiny LLaVA), prints a markdown table
    python benchmarks/run.py --quick    # fewer repeats
    python benchmarks/run.py --out benchmarks/RESULTS.md

Times are medians over interleaved repeats (raw, hooked, raw, hooked, ...), so drift on a shared machine hits both
sides alike. Nothing here is asserted: the table is the result.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tv_lens as tvl  # noqa: E402
from tv_lens import hooks as H  # noqa: E402
from tv_lens import prompts as P  # noqa: E402
from tv_lens.evaluate import first_token_correct  # noqa: E402

ROWS: list[tuple[str, str, float, float, str, dict]] = []
PEERS = ("TransformerBridge", "nnsight")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def compare(label: str, model_name: str, baseline, candidate, repeats: int, note: str = "",
            peers: dict | None = None) -> float:
    """Median time of ``candidate`` (and of each peer) / median time of ``baseline``, interleaved round-robin."""
    contenders = {"baseline": baseline, "tv_lens": candidate, **(peers or {})}
    for fn in contenders.values():
        fn()  # warm-up
    times = {k: [] for k in contenders}
    for _ in range(repeats):
        for key, fn in contenders.items():
            times[key] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    b, c = med["baseline"], med["tv_lens"]
    peer_ratios = {k: med[k] / b for k in (peers or {})}
    ROWS.append((model_name, label, b, c, note, peer_ratios))
    extra = "".join(f" | {k} {r:6.3f}x" for k, r in peer_ratios.items())
    print(f"{model_name:>14} | {label:<52} | {b * 1e3:9.1f} ms | {c * 1e3:9.1f} ms | {c / b:6.3f}x{extra} {note}",
          flush=True)
    return c / b


def _logits(out):
    return out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)


#: A peer whose numbers differ from ours by more than this did not compute the same thing: the run stops.
PEER_TOLERANCE = 1e-3


def one_position(cache: torch.Tensor) -> torch.Tensor:
    """A one-position cache as ``[batch, d]``: ours keeps the position axis (``[batch, 1, d]``), a peer's
    ``pos_slice=-1`` / ``[:, -1]`` drops it (``[batch, d]``)."""
    if cache.ndim == 3 and cache.shape[1] == 1:
        return cache[:, 0]
    if cache.ndim != 2:
        raise ValueError(f"a one-position cache is [batch, d] or [batch, 1, d]; got {tuple(cache.shape)}")
    return cache


def max_difference(what: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = PEER_TOLERANCE) -> float:
    """``max |ours - theirs|`` of two tensors of the SAME shape (never broadcast); raises when the shapes differ or
    the difference is over ``tolerance`` — a peer that computes something else must not be timed beside us."""
    if tuple(ours.shape) != tuple(theirs.shape):
        raise ValueError(f"{what}: shapes differ, ours {tuple(ours.shape)} vs {tuple(theirs.shape)}; compare like "
                         "with like")
    diff = (ours.float() - theirs.float()).abs().max().item()
    if not diff <= tolerance:
        raise ValueError(f"{what}: max abs. difference {diff:.3g} > {tolerance:g}: the peer does not compute the "
                         "same thing, its timing would not be comparable")
    return diff


@torch.no_grad()
def forward_rows(model, batch, name: str, repeats: int, peers: dict | None = None) -> None:
    """No-hook forward, one patch hook, and a one-position cache of every layer's resid_post, against raw HF.

    ``peers`` maps a peer's name to ``{"noop", "patch", "cache"}`` closures doing the same thing (or to the error
    that kept it from wrapping this model)."""
    hf = model.hf_model
    raw_inputs = {k: v for k, v in batch.items()}
    peers = peers or {}
    working = {k: v for k, v in peers.items() if isinstance(v, dict)}
    for peer, value in peers.items():
        if not isinstance(value, dict):
            print(f"{name:>14} | {peer} not measured: {value}", flush=True)

    def raw():
        hf(**raw_inputs, use_cache=False)

    vec = torch.zeros(model.cfg.d_model)
    layer = model.cfg.n_layers // 2
    ours = {
        "noop": lambda: model(batch),
        "patch": lambda: model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.hook_resid_post",
                                                                 H.patch(vec, at="last"))]),
        "cache": lambda: model.run_with_cache(batch, names_filter="blocks.*.hook_resid_post", positions="last"),
    }
    # The peers must compute the same thing: same logits with the patch (at real tokens: what a model computes at
    # left-padding positions is meaningless and differs between implementations), same cached vectors.
    check = {}
    ref_patch = _logits(ours["patch"]())
    ref_cache = ours["cache"]()[1]
    real = batch["attention_mask"].bool()
    for peer, ops in working.items():
        diff_patch = max_difference(f"{peer} patched logits", ref_patch[real], _logits(ops["patch"]())[real])
        cached = ops["cache"]()
        if isinstance(cached, tuple):  # bridge: (logits, ActivationCache)
            cached = [cached[1][f"blocks.{l}.hook_resid_post"] for l in range(model.cfg.n_layers)]
        diff_cache = max(max_difference(f"{peer} cache of layer {l}", one_position(ref_cache["resid_post", l]),
                                        one_position(c)) for l, c in enumerate(cached))
        check[peer] = f"{peer}: max abs. diff patched logits {diff_patch:.1e}, cache {diff_cache:.1e}"
    note = "; ".join(check.values())
    labels = {"noop": "forward, no hooks (hooked / raw HF)", "patch": "forward, one patch hook at the last token",
              "cache": "run_with_cache resid_post, all layers, one position"}
    for op, label in labels.items():
        compare(label, name, raw, ours[op], repeats, note=note if op == "cache" else "",
                peers={peer: ops[op] for peer, ops in working.items()})


def build_peers(model, inputs: dict, fresh_copy) -> dict:
    """TransformerBridge and nnsight around their own fresh copies of the HF model (or the error they raised)."""
    import peers as peer_lib

    layer = model.cfg.n_layers // 2
    out: dict = {}
    try:
        out["TransformerBridge"] = peer_lib.bridge_ops(fresh_copy(), inputs, model.cfg.n_layers, model.cfg.d_model,
                                                       layer)
    except Exception as exc:  # reported in the table, not hidden
        out["TransformerBridge"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    try:
        from tv_lens.adapters.base import resolve_path

        path = next(p for p in model.adapter.layers if resolve_path(model.hf_model, (p,)) is not None)
        out["nnsight"] = peer_lib.nnsight_ops(fresh_copy(), inputs, path, model.cfg.d_model, layer)
    except Exception as exc:
        out["nnsight"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return out


@torch.no_grad()
def generation_row(model, name: str, repeats: int, icl: bool = False) -> None:
    """8 new tokens for 8 prompts, patched at the final delimiter: contextless queries (``icl=False``, the patch
    method) or 5-shot ICL prompts (the prompts of the ``base`` method, where the prefix is ~7x longer)."""
    task = tvl.tasks.load("country-capital")
    prompts = P.icl(task.test[:8], n_shots=5, pool=task.train) if icl else P.queries(task.test[:8])
    batch = P.encode(model, prompts)
    vec = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 0.5
    layer = model.cfg.n_layers // 2
    name_hook = f"blocks.{layer}.hook_resid_post"
    n_new = 8

    def fast():
        return model.generate(batch, max_new_tokens=n_new, fwd_hooks=[(name_hook, H.patch(vec, at="delimiter"))],
                              return_new_tokens_only=True, eos_token_id=None)

    def recompute():
        ids, mask = batch["input_ids"], batch["attention_mask"]
        last = int(model.positions(batch).last[0])
        out = []
        for _ in range(n_new):
            logits = model.run_with_hooks({"input_ids": ids, "attention_mask": mask},
                                          fwd_hooks=[(name_hook, H.patch(vec, at=last))])
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        return torch.cat(out, 1)

    same = torch.equal(fast(), recompute())
    kind = f"5-shot ICL prompts, {batch['input_ids'].shape[1]} tokens" if icl else \
        f"queries, {batch['input_ids'].shape[1]} tokens"
    compare(f"patched generation of {n_new} tokens ({kind}): KV cache / recompute prefix", name, recompute, fast,
            repeats,
            note=f"identical tokens: {same}")


@torch.no_grad()
def memory_row(model, batch, name: str) -> None:
    def cache_bytes(**kw):
        _, cache = model.run_with_cache(batch, names_filter="blocks.*.hook_resid_post", **kw)
        return sum(t.numel() * t.element_size() for t in cache.values())

    full, one = cache_bytes(), cache_bytes(positions="last")
    ROWS.append((name, "cache bytes: one position / full sequence", full, one, "bytes, not seconds", {}))
    print(f"{name:>14} | cache bytes, one position / full sequence: {one} / {full} = {one / full:.4f}")
    if name == "SmolLM2-135M":   # peak process memory, each variant in a fresh subprocess (peak_memory.py)
        import peak_memory

        peak = peak_memory.main()
        full_peak, one_peak = peak["full"]["peak_increase"], peak["one"]["peak_increase"]
        ROWS.append((name, "peak memory bytes added by the cache: one position / full sequence", full_peak, one_peak,
                     "bytes, not seconds; fresh subprocess each", {}))


@torch.no_grad()
def sweep_row(model, name: str, n_val: int, n_test: int) -> None:
    """Extraction + full layer sweep + test evaluation of one task vs the paper-style loop."""
    task = tvl.tasks.load("country-capital", n_val=n_val, n_test=n_test)
    layers = list(range(model.cfg.n_layers))

    def ours():
        vec = tvl.extract_task_vector(model, P.icl(task.val, n_shots=5, pool=task.train), progress=False)
        sweep = tvl.layer_sweep(model, vec, task, progress=False)
        res = tvl.evaluate(model, task, ["patch"], vector=vec, layer=sweep.best, max_new_tokens=1, progress=False)
        return sweep.best, float(res.scores.accuracy.iloc[0])

    def paper_loop():
        # One example at a time, a forward hook per call, no KV cache (as the paper's scripts do it).
        hf = model.hf_model
        source = P.icl(task.val, n_shots=5, pool=task.train)
        sums = torch.zeros(len(layers), model.cfg.d_model)
        for prompt in source:
            batch = P.encode(model, [prompt])
            pos = int(batch.named_positions[0]["demo_delimiters"][-1])
            out = hf(**batch, output_hidden_states=True, use_cache=False)
            sums += torch.stack([out.hidden_states[l + 1][0, pos] for l in layers])
        means = sums / len(source)

        def accuracy(items, layer):
            correct = 0
            for item in items:
                batch = P.encode(model, [P.query(item)])
                pos = batch["input_ids"].shape[1] - 1

                def hook(module, args, output, layer=layer):
                    hidden = output[0] if isinstance(output, tuple) else output
                    hidden = hidden.clone()
                    hidden[0, pos] = means[layer]
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                handle = model._layers[layer].register_forward_hook(hook)
                try:
                    logits = hf(**batch, use_cache=False).logits
                finally:
                    handle.remove()
                token = model.to_string(logits[0, -1].argmax(-1, keepdim=True))
                correct += first_token_correct(token, item.output)
            return correct / len(items)

        per_layer = [accuracy(task.val, layer) for layer in layers]
        best = max(range(len(layers)), key=lambda i: (per_layer[i], -i))
        return best, accuracy(task.test, best)

    start = time.perf_counter()
    ours_out = ours()
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    paper_out = paper_loop()
    t_paper = time.perf_counter() - start
    note = f"best layer/test acc: ours {ours_out}, paper loop {paper_out}"
    ROWS.append((name, f"extract + sweep {len(layers)} layers + test ({n_val}/{n_test} items): ours / paper loop",
                 t_paper, t_ours, note, {}))
    print(f"{name:>14} | sweep: paper loop {t_paper:.1f}s, ours {t_ours:.1f}s -> {t_paper / t_ours:.1f}x faster; "
          f"{note}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="write the table as markdown here")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--no-peers", action="store_true", help="skip the TransformerBridge and nnsight columns")
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    torch.manual_seed(0)

    from tv_lens.offline import load_smollm2
    from tv_lens.testing import random_image, tiny_model

    hf, tokenizer = load_smollm2()
    smol = tvl.HookedMultimodalModel.from_hf(hf, tokenizer=tokenizer)
    task = tvl.tasks.load("country-capital")
    batch = P.encode(smol, P.icl(task.val[:8], n_shots=5, pool=task.train))
    peers = None if args.no_peers else build_peers(smol, dict(batch), lambda: load_smollm2()[0])
    forward_rows(smol, batch, "SmolLM2-135M", repeats, peers)
    del peers
    memory_row(smol, batch, "SmolLM2-135M")
    generation_row(smol, "SmolLM2-135M", max(3, repeats // 3))
    generation_row(smol, "SmolLM2-135M", max(3, repeats // 3), icl=True)
    if not args.skip_sweep:
        sweep_row(smol, "SmolLM2-135M", n_val=10 if args.quick else 30, n_test=20 if args.quick else 100)

    tiny = tiny_model("llava")
    llava = tiny.hooked()
    items = [dict(input=f"x{i}", output=f"y{i}", image=random_image(32, 32, i)) for i in range(8)]
    vbatch = P.encode(llava, P.icl(items, n_shots=3, modality="image"))
    peers = None if args.no_peers else build_peers(llava, dict(vbatch), lambda: copy.deepcopy(tiny.model))
    # a 15 ms forward on a shared CPU is noisy: many more (cheap) repeats for a stable median
    forward_rows(llava, vbatch, "tiny LLaVA", repeats * 20, peers)

    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"python {platform.python_version()}", "",
             "Ratios are time / baseline time (lower is faster); the peers' columns use the same baseline, measured "
             "round-robin in the same loop.", "",
             "| model | measurement | baseline | tv_lens | tv_lens ratio | " + " | ".join(f"{p} ratio" for p in PEERS)
             + " | note |", "|" + " --- |" * (6 + len(PEERS))]
    for model_name, label, base, cand, note, peer_ratios in ROWS:
        unit = "" if "bytes" in label else " s"
        cells = " | ".join(f"{peer_ratios[p]:.3f}" if p in peer_ratios else "—" for p in PEERS)
        lines.append(f"| {model_name} | {label} | {base:.4g}{unit} | {cand:.4g}{unit} | {cand / base:.3f} | {cells} "
                     f"| {note} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
