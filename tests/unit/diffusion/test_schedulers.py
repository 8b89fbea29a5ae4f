"""Sigma table and schedules against the spec's formulas and ComfyUI-measured vectors (§4.1, §4.4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.schedulers import SCHEDULER_NAMES, SCHEDULERS, ksampler_sigmas

MEASURED_10 = {
    "simple": "14.61464 8.3028 5.08776 3.32108 2.27646 1.61289 1.16058 0.82986 0.56928 0.34167 0",
    "sgm_uniform": "14.61464 8.30717 5.09241 3.32507 2.27973 1.61558 1.16286 0.83188 0.57119 0.3437 0",
    "karras": "14.61464 9.10293 5.47839 3.1686 1.74942 0.91407 0.44692 0.2014 0.08191 0.02917 0",
    "exponential": "14.61464 7.32487 3.67123 1.84002 0.92222 0.46222 0.23166 0.11611 0.05819 0.02917 0",
    "ddim_uniform": "8.39069 5.13443 3.34776 2.29285 1.62369 1.16822 0.83565 0.57405 0.34619 0.04131 0",
    "beta": "14.61464 11.54277 7.37184 4.3728 2.61524 1.61828 1.02733 0.65489 0.39551 0.19906 0",
    "normal": "14.61464 7.83988 4.60917 2.91831 1.95016 1.34493 0.93236 0.62498 0.36866 0.02917 0",
    "linear_quadratic": "14.61464 14.54157 14.4685 14.39542 14.32235 14.24928 13.62084 11.8817 9.03185 5.07128 0",
    "kl_optimal": "14.61463 4.23235 2.39372 1.59707 1.133 0.81524 0.57291 0.37248 0.19529 0.02917 0",
}


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling()


def _reference_sigmas() -> np.ndarray:
    i = np.arange(1000, dtype=np.float64)
    betas = (math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


def test_sigma_table_matches_the_formula(ms: ModelSampling) -> None:
    ref = _reference_sigmas()
    assert np.allclose(ms.sigmas.numpy(), ref.astype(np.float32), rtol=0, atol=0)
    assert ms.sigmas[0].item() == pytest.approx(0.0291672, abs=1e-7)
    assert ms.sigmas[1].item() == pytest.approx(0.041314, abs=1e-6)
    assert ms.sigmas[500].item() == pytest.approx(1.618279, abs=1e-6)
    assert ms.sigmas[999].item() == pytest.approx(14.6146412, abs=1e-6)


def test_ztsnr_table_ends_high() -> None:
    assert ModelSampling(zero_terminal_snr=True).sigmas[-1].item() == pytest.approx(4518.76, rel=1e-4)


def test_timestep_is_nearest_index(ms: ModelSampling) -> None:
    karras = SCHEDULERS["karras"](ms, 10)[:-1]
    assert ms.timestep(karras).tolist() == [999, 916, 815, 687, 523, 327, 146, 41, 7, 0]


@pytest.mark.parametrize("name", list(MEASURED_10))
def test_schedule_matches_measured(ms: ModelSampling, name: str) -> None:
    expected = [float(v) for v in MEASURED_10[name].split()]
    got = SCHEDULERS[name](ms, 10)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, abs=1.5e-5)


def test_scheduler_names_in_widget_order() -> None:
    assert SCHEDULER_NAMES == ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                               "normal", "linear_quadratic", "kl_optimal")


def test_karras_formula_independently(ms: ModelSampling) -> None:
    n, rho = 7, 7.0
    lo, hi = float(ms.sigma_min), float(ms.sigma_max)
    ref = [(hi ** (1 / rho) + k / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for k in range(n)]
    assert SCHEDULERS["karras"](ms, n).tolist() == pytest.approx([*ref, 0.0], rel=1e-5)


def test_counts(ms: ModelSampling) -> None:
    assert len(SCHEDULERS["ddim_uniform"](ms, 30)) == 32
    assert len(SCHEDULERS["beta"](ms, 200)) == 200  # 199 steps


def test_denoise_and_discard_rules(ms: ModelSampling) -> None:
    half = ksampler_sigmas(ms, "normal", 10, "euler", denoise=0.5)
    assert half is not None
    assert half.tolist() == pytest.approx(
        [1.48058, 1.24581, 1.04814, 0.87843, 0.72972, 0.59643, 0.47358, 0.35555, 0.23216, 0.02917, 0], abs=1.5e-5)
    dpm2 = ksampler_sigmas(ms, "karras", 10, "dpm_2")
    assert dpm2 is not None
    assert dpm2.tolist() == pytest.approx(
        [14.61464, 9.55826, 6.08215, 3.75125, 2.23215, 1.2741, 0.69257, 0.35518, 0.16976, 0.07436, 0], abs=1.5e-5)
    empty = ksampler_sigmas(ms, "normal", 10, "euler", denoise=0.0)
    assert empty is not None and len(empty) == 0


def test_advanced_start_end(ms: ModelSampling) -> None:
    full = ksampler_sigmas(ms, "normal", 10, "euler")
    assert full is not None
    first = ksampler_sigmas(ms, "normal", 10, "euler", last_step=4, force_full_denoise=False)
    assert first is not None and first.tolist() == full[:5].tolist()
    forced = ksampler_sigmas(ms, "normal", 10, "euler", last_step=4, force_full_denoise=True)
    assert forced is not None and forced[-1].item() == 0 and len(forced) == 5
    second = ksampler_sigmas(ms, "normal", 10, "euler", start_step=4)
    assert second is not None and second.tolist() == full[4:].tolist()
    assert ksampler_sigmas(ms, "normal", 10, "euler", start_step=10) is None
