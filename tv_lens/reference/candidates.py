"""Candidate tasks for the reference VLM's own suite: labels for the 330 entities its vision side recognises.

Each candidate maps a trained entity (image key, name, group) to a label, or ``None`` when the entity is not part of
the task. Nothing here is ever used to train anything: the vision side was trained on names only
(:mod:`tv_lens.reference.train`), and :mod:`tv_lens.reference.choose_tasks` only *measures* SmolLM2 on them.

Continents follow the UN geoscheme (Cyprus, Turkey, Georgia, Armenia, Azerbaijan in Asia; Russia in Europe;
Central America and the Caribbean in North America).
"""

from __future__ import annotations

from collections.abc import Callable

CONTINENT_CODES = {
    "Africa": "ao bf bi bj bw cd cf cg ci cm cv dj dz eg er et ga gh gm gn gq gw ke km lr ls ly ma mg ml mr mu mw "
              "mz na ne ng rw sc sd sl sn so ss st sz td tg tn tz ug za zm zw",
    "Asia": "ae af am az bd bh bn bt cn cy ge id il in iq ir jo jp kg kh kp kr kw kz la lb lk mm mn mv my np om ph "
            "pk qa sa sg sy th tj tl tm tr tw uz vn ye",
    "Europe": "ad al at ba be bg by ch cz de dk ee es fi fr gb gr hr hu ie is it li lt lu lv mc md me mk mt nl no "
              "pl pt ro rs ru se si sk sm ua va",
    "North America": "ag bb bs bz ca cr cu dm do gd gt hn ht jm kn lc mx ni pa sv tt us vc",
    "South America": "ar bo br cl co ec gy pe py sr uy ve",
    "Oceania": "au fj fm ki mh nr nz pg pw sb to tv vu ws",
}
CONTINENT = {code: continent for continent, codes in CONTINENT_CODES.items() for code in codes.split()}

_ANIMAL_NON_MAMMALS = {
    "bird": "Chicken, Penguin, Dove, Wild Turkey, Bald Eagle, Mallard, Owl, Indian Peafowl, Parrot, Mute Swan, Dodo, "
            "Flamingo, Goose",
    "reptile": "Crocodile, Turtle, Tyrannosaurus",
    "fish": "Fish, Great White Shark",
    "insect": "Ant, Western Honey Bee, Seven-spot Ladybird, Monarch Butterfly, Cricket, Mosquito, House Fly, Beetle, "
              "Cockroach",
    "amphibian": "Frog",
    "mollusc": "Common Octopus, Oyster",
    "arachnid": "Spider",
}
ANIMAL_CLASS = {name.strip(): cls for cls, names in _ANIMAL_NON_MAMMALS.items() for name in names.split(",")}

_FOOD_KINDS = {
    "fruit": "Grape, Melon, Watermelon, Tangerine, Lemon, Lime, Banana, Pineapple, Apple, Green Apple, Pear, Peach, "
             "Cherry, Strawberry, Avocado, Kiwi, Coconut, Mango, Blueberry, Olive",
    "vegetable": "Chili Pepper, Corn, Mushroom, Tomato, Eggplant, Sweet Potato, Cucumber, Potato, Carrot, Broccoli, "
                 "Bok Choy, Garlic, Onion, Green Bell Pepper, Kidney Bean, Ginger, Pea",
    "sweet": "Ice Cream, Doughnut, Cookie, Chocolate, Candy, Honey, Cupcake",
    "snack": "French Fries, Popcorn, Pretzel",
    "nut": "Chestnut, Peanut",
    "dairy": "Cheese, Butter",
    "grain": "Rice",
    "meat": "Bacon",
    "seasoning": "Salt",
}
FOOD_KIND = {name.strip(): kind for kind, names in _FOOD_KINDS.items() for name in names.split(",")}


def _country_code(key: str) -> str:
    return key.split("/")[-1].split(".")[0]


#: name -> (groups, label function, instruction, task word, label notes)
CANDIDATES: dict[str, tuple[tuple[str, ...], Callable[[str, str], str | None], str, str, str]] = {
    "name-lower": (("flags", "animals", "foods"), lambda key, name: name.lower(),
                   "The name of the thing, in lower case:", "lower",
                   "The entity's name in lower case (the name is the one the vision side was trained to say)."),
    "name-upper": (("flags", "animals", "foods"), lambda key, name: name.upper(),
                   "The name of the thing, in capital letters:", "capital",
                   "The entity's name in upper case."),
    "name-first-letter": (("flags", "animals", "foods"), lambda key, name: name[0],
                          "The first letter of the name of the thing:", "letter",
                          "The first character of the entity's name (one capital letter)."),
    "name-first-word": (("flags", "animals", "foods"), lambda key, name: name.split()[0],
                        "The first word of the name of the thing:", "word",
                        "The first word of the entity's name (the whole name when it is one word)."),
    "country-continent": (("flags",), lambda key, name: CONTINENT[_country_code(key)],
                          "The continent of the country:", "continent",
                          "UN geoscheme continent: Africa, Asia, Europe, North America (with Central America and "
                          "the Caribbean), South America, Oceania."),
    "animal-class": (("animals",), lambda key, name: ANIMAL_CLASS.get(name, "mammal"),
                     "The class of the animal:", "class",
                     "mammal, bird, reptile, fish, insect, amphibian, mollusc or arachnid (lower case)."),
    "food-kind": (("foods",), lambda key, name: FOOD_KIND[name],
                  "The kind of the food:", "kind",
                  "fruit, vegetable, sweet, snack, nut, dairy, grain, meat or seasoning (culinary use)."),
}


def candidate_items(name: str, entities) -> list[dict]:
    """Task items ``{"input", "output", "image"}`` of candidate ``name`` over ``entities`` ((key, name, group) rows)."""
    groups, label, *_ = CANDIDATES[name]
    items = []
    for key, entity, group in entities:
        if group in groups:
            out = label(key, entity)
            if out is not None:
                items.append({"input": entity, "output": out, "image": key})
    return items
