"""One module per job; each has `prepare(cfg, run) -> inputs` (every check before the run writes
anything) and `run(cfg, run, inputs) -> report` (the job, as a short list of named steps).

    builtin              a built-in network trained on built-in or user data, then distilled
    guided               guided distillation ([GD]): a conditional teacher, stages 1 and 2
    diffusers_teacher    a diffusers UNet2DModel pipeline folder as the teacher
    text_to_image        a latent pipeline folder (Stable Diffusion: guided; LDM) as the teacher

`job_module(name)` imports the job of a config's `job` name.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "builtin": "builtin",
    "guided": "guided",
    "diffusers": "diffusers_teacher",
    "text_to_image": "text_to_image",
}


def job_module(name: str) -> ModuleType:
    """The module of the job `name` (a config's `job`)."""
    return importlib.import_module(f"{__name__}.{MODULES[name]}")
