"""Shared test inputs for the tiny families."""

from __future__ import annotations

from tv_lens.testing import TinyModel, random_image


def two_prompts(tiny: TinyModel, hooked, n_images=(1, 2)):
    """A left-padded batch of two prompts; VLM rows carry ``n_images`` images each, separated by text.

    Families whose processor takes fewer images per prompt (``adapter.max_images_per_prompt``) get that many;
    families whose processor puts the image before the text (``adapter.images_first``) get the placeholders first.
    """
    if hooked.image_placeholder is None:
        return hooked.prepare(["Q:France\nA:Paris\n\nQ:Spain\nA:", "Q:Peru\nA:"]), []
    ph = hooked.image_placeholder
    limit = hooked.adapter.max_images_per_prompt
    if limit is not None:
        n_images = tuple(min(count, limit) for count in n_images)
    texts, images = [], []
    width, height = tiny.image_size
    for row, count in enumerate(n_images):
        parts = [f"Q:{ph}\nA:x{i}\n\n" for i in range(count - 1)] + [f"Q:{ph}\nA:"]
        text = ("pad " * row) + "".join(parts)
        if hooked.adapter.images_first:
            text = ph * count + text.replace(ph, "")
        texts.append(text)
        images.append([random_image(width, height, seed=10 * row + i) for i in range(count)])
    return hooked.prepare(texts, images=images), images


def items(pairs, with_images: bool = False, size=(32, 32)) -> list[dict]:
    """Task items as dicts ``{input, output, image}``; a seeded random image per item when ``with_images``."""
    return [dict(input=x, output=y, image=random_image(*size, seed=i) if with_images else None)
            for i, (x, y) in enumerate(pairs)]
