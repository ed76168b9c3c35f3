from __future__ import annotations

import importlib.util

import pytest

from lora_pipeline.generation.samplers import SAMPLERS, SCHEDULERS, scheduler_for

SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_builds_its_scheduler_and_keeps_the_model_betas(sampler: str) -> None:
    if sampler == "lms" and importlib.util.find_spec("scipy") is None:
        with pytest.raises(ValueError, match="'lms' is unavailable here.*scipy"):
            scheduler_for(sampler, "normal", SD15_SCHEDULER)
        return
    scheduler = scheduler_for(sampler, "normal", SD15_SCHEDULER)
    assert type(scheduler).__name__ == SAMPLERS[sampler][0]
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == pytest.approx(0.012)
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) >= 10


def test_comfyui_names_map_to_diffusers_options() -> None:
    karras = scheduler_for("dpmpp_2m", "karras", SD15_SCHEDULER)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler"
    assert karras.config.use_karras_sigmas is True
    assert karras.config.algorithm_type == "dpmsolver++"
    assert scheduler_for("dpmpp_2m_sde", "normal", SD15_SCHEDULER).config.algorithm_type == (
        "sde-dpmsolver++"
    )
    assert scheduler_for("euler", "sgm_uniform", SD15_SCHEDULER).config.timestep_spacing == (
        "trailing"
    )


def test_normal_switches_off_karras_sigmas_of_the_base_config() -> None:
    base = {**SD15_SCHEDULER, "use_karras_sigmas": True}
    assert scheduler_for("euler", "normal", base).config.use_karras_sigmas is False


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*dpmpp_2m.*euler"):
        scheduler_for("nope", "normal", SD15_SCHEDULER)
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*karras.*normal"):
        scheduler_for("euler", "nope", SD15_SCHEDULER)
    assert "karras" in SCHEDULERS


def test_a_pair_diffusers_cannot_do_is_refused() -> None:
    with pytest.raises(ValueError, match="'ddim'.*cannot use scheduler 'karras'"):
        scheduler_for("ddim", "karras", SD15_SCHEDULER)
