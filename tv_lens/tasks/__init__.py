"""The paper's six tasks as data, and loaders for the paper's released format, user files and Python pairs.

>>> import tv_lens as tvl
>>> task = tvl.tasks.load("country-capital")      # doctest: +SKIP
>>> task.val[0].input, task.val[0].output           # doctest: +SKIP

Tasks (instruction as in the paper's Table 1; ``task_word`` is the "task" phase word of the logit-lens curves):

============== ========================================================== =========
name           instruction                                                task_word
============== ========================================================== =========
country-capital  The capital city of the country:                          capital
country-currency The last word of the official currency of the country:    currency
animal-latin     The scientific name of the animal's species in latin:     species
animal-young     The term for the baby of the animal:                      baby
food-color       The color of the food:                                    color
food-flavor      The flavor descriptor of the food:                        flavor
============== ========================================================== =========

See ``docs/tasks.md``.
"""

from ..errors import TaskError
from .core import Task, TaskItem, TaskWarning, split_items
from .descriptions import paper_descriptions
from .loaders import (
    DATA_DIR,
    IMAGES_DIR,
    PAPER_REPO_ID,
    PAPER_TASKS,
    fetch_paper_data,
    from_csv,
    from_json,
    from_pairs,
    from_paper_folder,
    list_tasks,
    load,
    save_json,
)

__all__ = [
    "Task",
    "TaskItem",
    "TaskError",
    "TaskWarning",
    "list_tasks",
    "load",
    "from_json",
    "from_csv",
    "from_pairs",
    "from_paper_folder",
    "fetch_paper_data",
    "save_json",
    "split_items",
    "paper_descriptions",
    "DATA_DIR",
    "IMAGES_DIR",
    "PAPER_TASKS",
    "PAPER_REPO_ID",
]
