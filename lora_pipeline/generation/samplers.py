"""ComfyUI sampler and scheduler names → diffusers schedulers.

ComfyUI splits a sampling method in two: the sampler (the ODE/SDE solver, e.g. `dpmpp_2m`) and the
scheduler (how the noise levels are spaced, e.g. `karras`). diffusers puts both in one scheduler
object; this module makes the one from the other, following the table in the diffusers docs
("A1111/k-diffusion → diffusers"), so that a local preview and a ComfyUI render of the same
settings use the same method.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from typing import Any

# sampler name → (diffusers scheduler class name, options)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),  # needs scipy
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    # diffusers' own table maps "DPM++ SDE" to the single-step solver; the true SDE scheduler
    # needs torchsde, which would make the result depend on an optional package.
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "lcm": ("LCMScheduler", {}),
}

_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# scheduler name → options. An option a scheduler class does not take makes the pair unsupported.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    # ComfyUI's simple / sgm_uniform take evenly spaced steps that end at the last timestep.
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}


def _known(names: Mapping[str, object]) -> str:
    return ", ".join(sorted(names))


def _init_parameters(scheduler_class: type) -> set[str]:
    return set(inspect.signature(scheduler_class.__init__).parameters)


def _options_for(
    scheduler_class: type, sampler: str, scheduler: str, base: dict[str, Any]
) -> dict[str, Any]:
    accepted = _init_parameters(scheduler_class)
    # A base config may come with Karras sigmas switched on; "normal" must mean plain sigmas.
    options = {name: False for name in _SIGMA_OPTIONS if name in accepted}
    options.update(base)
    for name, value in SCHEDULERS[scheduler].items():
        if name not in accepted:
            raise ValueError(
                f"sampler {sampler!r} ({scheduler_class.__name__}) cannot use scheduler "
                f"{scheduler!r} in diffusers; choose another scheduler, e.g. 'normal'"
            )
        options[name] = value
    if options.get("use_beta_sigmas") and importlib.util.find_spec("scipy") is None:
        raise ValueError("the 'beta' scheduler needs scipy, which is not installed")
    return options


def scheduler_for(sampler: str, scheduler: str, config: Mapping[str, Any]):  # -> SchedulerMixin
    """A diffusers scheduler for a ComfyUI sampler and scheduler, built from a model's config.

    `config` is the model's scheduler config (`pipe.scheduler.config`), which carries the beta
    schedule and prediction type that every scheduler must share with the model.
    """
    import diffusers

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {_known(SAMPLERS)}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; known schedulers: {_known(SCHEDULERS)}")
    class_name, base_options = SAMPLERS[sampler]
    scheduler_class = getattr(diffusers, class_name)
    options = _options_for(scheduler_class, sampler, scheduler, dict(base_options))
    try:
        return scheduler_class.from_config(dict(config), **options)
    except ImportError as error:
        # diffusers puts a placeholder class in place of a scheduler whose dependency is missing
        reason = " ".join(str(error).split())
        raise ValueError(f"sampler {sampler!r} is unavailable here: {reason}") from error
