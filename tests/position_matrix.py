"""The tokenizer × template × prompt-kind matrix of tests/position_checks.py: seeded random inputs and labels
(the property test's symbols) per cell; each sample ends "ok", "merged" (a DelimiterWarning naming qa_space was
raised), a typed error, or FAIL (a named position decoded to the wrong token, or an untyped error).

    PYTHONPATH=. python tests/position_matrix.py [samples_per_cell]
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from position_checks import NAMES, SYMBOLS, build_prompt, encode_checked, kinds_of  # noqa: E402

from tv_lens import prompts as P  # noqa: E402
from tv_lens.errors import TvLensError  # noqa: E402
from tv_lens.testing.real_tokenizers import real_tokenizer_model  # noqa: E402


def _text(rng: random.Random) -> str:
    while True:
        text = "".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 5)))
        if text.strip():
            return text


def run(samples: int = 8) -> list[tuple[str, str, str, bool, Counter]]:
    rows = []
    for name in NAMES:
        tiny = real_tokenizer_model(name)
        model = tiny.hooked()
        for template in sorted(P.TEMPLATES):
            for kind in kinds_of(name):
                for chat in ((False,) if kind == "instruction" else (False, True)):
                    rng = random.Random(f"{name}:{template}:{kind}:{chat}")
                    outcomes = Counter()
                    for _ in range(samples):
                        xs, ys = [_text(rng) for _ in range(3)], [_text(rng) for _ in range(3)]
                        try:
                            outcomes[encode_checked(model, build_prompt(tiny, kind, template, chat, xs, ys))] += 1
                        except TvLensError as error:
                            outcomes[type(error).__name__] += 1
                        except AssertionError:
                            outcomes["FAIL"] += 1
                        except Exception as error:   # noqa: BLE001 - an untyped error is a failure too
                            outcomes[f"FAIL untyped {type(error).__name__}"] += 1
                    rows.append((name, template, kind, chat, outcomes))
    return rows


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rows = run(samples)
    print("| tokenizer | template | kind | chat | ok | merged (warned) | typed error | FAIL |")
    print("|---|---|---|---|---|---|---|---|")
    for name, template, kind, chat, c in rows:
        failed = {k: v for k, v in c.items() if k.startswith("FAIL")}
        typed = {k: v for k, v in c.items() if k not in ("ok", "merged") and k not in failed}
        typed_text = f"{sum(typed.values())}" + (f" ({', '.join(typed)})" if typed else "")
        fail_text = f"{sum(failed.values())}" + (f" ({', '.join(k for k in failed if k != 'FAIL')})"
                                                 if set(failed) - {"FAIL"} else "")
        print(f"| {name} | {template} | {kind} | {chat} | {c['ok']} | {c['merged']} | {typed_text} | {fail_text} |")
    total = Counter()
    for *_, c in rows:
        total.update(c)
    print(f"\n{len(rows)} cells × {samples} samples: {dict(total)}")


if __name__ == "__main__":
    main()
