"""Render the images the tasks reference, from two Debian packages only.

    apt-get install -y iso-flags-png-320x240 fonts-noto-color-emoji
    python -m tv_lens.reference.build_images            # renders every key referenced in tv_lens/tasks/data/*.json
    python -m tv_lens.reference.build_images --check    # only report which keys are missing / unrenderable

Keys:
- ``flags/{cc}.png``: ``/usr/share/iso-flags-png-320x240/{cc}.png`` (RGBA) alpha-composited on white, downscaled to
  96x72 (Lanczos).
- ``emoji/u{cp}[_{cp}...].png``: the Noto Color Emoji glyph for those code points (hex), drawn with Pillow
  ``ImageFont.truetype(NotoColorEmoji.ttf, 109)`` and ``embedded_color=True`` onto a transparent 136x128 cell, composited
  on white, centred on a white 136x136 square and downscaled to 72x72 (Lanczos).

Output: ``tv_lens/data/images/{flags,emoji}/...`` plus ``SOURCES.md``. Deterministic: the same packages give the same
bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FLAGS_DIR = Path("/usr/share/iso-flags-png-320x240")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_FONT_SIZE = 109  # the only size of the CBDT bitmap strike in Noto Color Emoji
FLAG_SIZE = (96, 72)
EMOJI_SIZE = (72, 72)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = PACKAGE_ROOT / "data" / "images"
TASKS_DATA_DIR = PACKAGE_ROOT / "tasks" / "data"


class ImageSourceError(RuntimeError):
    """An image key cannot be rendered from the installed packages."""


def referenced_keys(tasks_dir: Path = TASKS_DATA_DIR) -> dict[str, str]:
    """Every ``image`` key in the task files -> the item's ``input`` (entity name). Conflicting names raise."""
    keys: dict[str, str] = {}
    files = sorted(tasks_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no task files in {tasks_dir}")
    for path in files:
        data = json.loads(path.read_text())
        items = data["items"] if isinstance(data, dict) and "items" in data else data
        if isinstance(items, dict):  # split -> items
            items = [it for split in items.values() for it in split]
        for it in items:
            key = it.get("image")
            if not key:
                continue
            name = it["input"]
            if keys.get(key, name) != name:
                raise ImageSourceError(f"{key} is used for both {keys[key]!r} and {name!r} ({path.name})")
            keys[key] = name
    return keys


def emoji_text(key: str) -> str:
    """``emoji/u1f415_200d_1f9ba.png`` -> the character sequence."""
    stem = Path(key).stem
    parts = [p[1:] if p.lower().startswith("u") else p for p in stem.split("_")]
    try:
        return "".join(chr(int(p, 16)) for p in parts)
    except ValueError as exc:
        raise ImageSourceError(f"{key}: not a code-point key like emoji/u1f415.png") from exc


def render_flag(key: str) -> Image.Image:
    src = FLAGS_DIR / Path(key).name
    if not src.is_file():
        raise ImageSourceError(f"{key}: {src} not found (package iso-flags-png-320x240)")
    with Image.open(src) as im:
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        canvas.alpha_composite(im)
    return canvas.convert("RGB").resize(FLAG_SIZE, Image.LANCZOS)


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        if not EMOJI_FONT.is_file():
            raise ImageSourceError(f"{EMOJI_FONT} not found (package fonts-noto-color-emoji)")
        _FONT = ImageFont.truetype(str(EMOJI_FONT), EMOJI_FONT_SIZE)
    return _FONT


def render_emoji(key: str) -> Image.Image:
    text = emoji_text(key)
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    if bottom - top <= 1 or right - left <= 1:
        raise ImageSourceError(f"{key}: no glyph for {text!r} in Noto Color Emoji")
    cell = Image.new("RGBA", (right, bottom), (255, 255, 255, 0))
    ImageDraw.Draw(cell).text((0, 0), text, font=font, embedded_color=True)
    if cell.getchannel("A").getbbox() is None:
        raise ImageSourceError(f"{key}: glyph for {text!r} renders empty")
    if right > 140:  # a ZWJ sequence the font lacks falls back to several glyphs side by side
        raise ImageSourceError(f"{key}: {text!r} renders as {right // 136} separate glyphs (sequence not in font)")
    side = max(cell.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(cell, ((side - cell.width) // 2, (side - cell.height) // 2))
    return square.convert("RGB").resize(EMOJI_SIZE, Image.LANCZOS)


def render(key: str) -> Image.Image:
    if key.startswith("flags/"):
        return render_flag(key)
    if key.startswith("emoji/"):
        return render_emoji(key)
    raise ImageSourceError(f"{key}: unknown image family (expected flags/... or emoji/...)")


def _package_version(name: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_sources(out_dir: Path, n_flags: int, n_emoji: int) -> None:
    flags_v = _package_version("iso-flags-png-320x240")
    emoji_v = _package_version("fonts-noto-color-emoji")
    text = f"""# Image sources

Rendered by `python -m tv_lens.reference.build_images` from two Debian (bookworm) packages only. Nothing was
downloaded from elsewhere.

| folder | files | source package | version | upstream | licence |
|---|---|---|---|---|---|
| `flags/` | {n_flags} | `iso-flags-png-320x240` | {flags_v} | https://github.com/linuxmint/flags | public domain (dedication by Brett Roper, see `/usr/share/doc/iso-flags-png-320x240/copyright`) |
| `emoji/` | {n_emoji} | `fonts-noto-color-emoji` (`NotoColorEmoji.ttf`) | {emoji_v} | https://github.com/googlefonts/noto-emoji | SIL Open Font License 1.1 (OFL-1.1), Copyright 2013-2017 Google Inc. (see `/usr/share/doc/fonts-noto-color-emoji/copyright`) |

Processing:
- flags: `/usr/share/iso-flags-png-320x240/{{cc}}.png` (320x240 RGBA) alpha-composited on white, resized to
  {FLAG_SIZE[0]}x{FLAG_SIZE[1]} with Lanczos. File name = the package's (ISO 3166-1 alpha-2, lower case).
- emoji: glyph drawn with Pillow `ImageFont.truetype(NotoColorEmoji.ttf, {EMOJI_FONT_SIZE})`,
  `ImageDraw.text(..., embedded_color=True)` on a transparent cell, composited on white, centred on a white square,
  resized to {EMOJI_SIZE[0]}x{EMOJI_SIZE[1]} with Lanczos. File name = `u` + the code points in lower-case hex joined
  by `_` (e.g. `u1f415.png` = U+1F415 DOG).

The emoji images are renderings of glyphs of an OFL-1.1 font; under OFL-1.1 the font may be used, and its output is
not restricted. The font software itself is not redistributed here.
"""
    (out_dir / "SOURCES.md").write_text(text)


def build(keys, out_dir: Path = IMAGES_DIR, strict: bool = True) -> tuple[list[str], dict[str, str]]:
    """Render ``keys`` into ``out_dir``; return (written keys, {failed key: reason})."""
    written, failed = [], {}
    for key in sorted(keys):
        try:
            im = render(key)
        except ImageSourceError as exc:
            failed[key] = str(exc)
            continue
        path = out_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, format="PNG", optimize=True)
        written.append(key)
    if failed and strict:
        raise ImageSourceError("cannot render: " + "; ".join(failed.values()))
    n_flags = len(list((out_dir / "flags").glob("*.png"))) if (out_dir / "flags").is_dir() else 0
    n_emoji = len(list((out_dir / "emoji").glob("*.png"))) if (out_dir / "emoji").is_dir() else 0
    write_sources(out_dir, n_flags, n_emoji)
    return written, failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks-dir", type=Path, default=TASKS_DATA_DIR)
    ap.add_argument("--out", type=Path, default=IMAGES_DIR)
    ap.add_argument("--check", action="store_true", help="only report keys that cannot be rendered")
    ap.add_argument("--prune", action="store_true", help="delete images under --out that no task references")
    args = ap.parse_args(argv)
    keys = referenced_keys(args.tasks_dir)
    if args.check:
        bad = {}
        for k in sorted(keys):
            try:
                render(k)
            except ImageSourceError as exc:
                bad[k] = str(exc)
        print(f"{len(keys)} keys, {len(bad)} unrenderable")
        for reason in bad.values():
            print("  ", reason)
        return 1 if bad else 0
    written, failed = build(keys, args.out, strict=False)
    if args.prune:
        for path in sorted(args.out.glob("*/*.png")):
            if f"{path.parent.name}/{path.name}" not in keys:
                path.unlink()
                print("removed", path)
        write_sources(args.out, len(list((args.out / "flags").glob("*.png"))),
                      len(list((args.out / "emoji").glob("*.png"))))
    print(f"wrote {len(written)} images to {args.out}")
    for reason in failed.values():
        print("FAILED:", reason, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
