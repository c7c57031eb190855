"""Peak process memory of ``run_with_cache`` keeping one position vs the full sequence (SmolLM2-135M, CPU).

    python benchmarks/peak_memory.py

Each variant runs in its own fresh subprocess: load the model, run the plain forward twice (this sets the peak of
everything that is not the cache), read the peak resident set size (``VmHWM``, Linux), then cache ``hook_resid_post`` of every layer
(full sequence, or one position per row) and read the peak again. The increase is what the cache adds at its peak.
Linux reports the peak in KiB. The children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the
resident set (see ``measure``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, torch
import tv_lens as tvl
from tv_lens import prompts as P
from tv_lens.offline import load_smollm2
torch.set_grad_enabled(False)
hf, tok = load_smollm2()
model = tvl.HookedMultimodalModel.from_hf(hf, tokenizer=tok)
task = tvl.tasks.load("country-capital")
batch = P.encode(model, P.icl(task.val[:8], n_shots=5, pool=task.train))
model(batch); model(batch)
def peak_bytes():  # VmHWM: this process's own high-water mark (ru_maxrss would carry the parent's across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
before = peak_bytes()
keep = None if sys.argv[1] == "full" else "last"
_, cache = model.run_with_cache(batch, names_filter="blocks.*.hook_resid_post", positions=keep)
after = peak_bytes()
cached = sum(t.numel() * t.element_size() for t in cache.values())
print(json.dumps({"peak_increase": after - before, "cache_bytes": cached,
                  "shape": list(batch["input_ids"].shape)}))
"""


def measure(variant: str) -> dict:
    # Allocations of 64 KiB and more are mmapped and unmapped when freed, at a FIXED threshold: otherwise glibc keeps
    # freed heap pages resident and the cache fills them without raising the peak (we saw anything from 0 to 60 MiB).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    full, one = measure("full"), measure("one")
    print(f"SmolLM2-135M, batch {full['shape']}: peak memory added by the cache, full sequence "
          f"{full['peak_increase'] / 2**20:.1f} MiB (cache {full['cache_bytes'] / 2**20:.1f} MiB), one position "
          f"{one['peak_increase'] / 2**20:.1f} MiB (cache {one['cache_bytes'] / 2**20:.2f} MiB)", flush=True)
    return {"full": full, "one": one}


if __name__ == "__main__":
    main()
