"""Sampler algorithms by ComfyUI name: all 44 of ComfyUI 0.8.0, in its widget order."""

from __future__ import annotations

from comfymesh.diffusion.sampling.samplers.base import Denoiser, Sampler, SamplerEnv, StepCallback
from comfymesh.diffusion.sampling.samplers.cfg_pp import (
    make_euler_cfg_pp,
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
)
from comfymesh.diffusion.sampling.samplers.deis import sample_deis
from comfymesh.diffusion.sampling.samplers.dpm_2 import sample_dpm_2, sample_dpm_2_ancestral
from comfymesh.diffusion.sampling.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from comfymesh.diffusion.sampling.samplers.dpmpp_2m import sample_dpmpp_2m
from comfymesh.diffusion.sampling.samplers.dpmpp_2m_sde import make_dpmpp_2m_sde, make_dpmpp_3m_sde
from comfymesh.diffusion.sampling.samplers.dpmpp_2s_ancestral import sample_dpmpp_2s_ancestral
from comfymesh.diffusion.sampling.samplers.dpmpp_sde import make_dpmpp_sde
from comfymesh.diffusion.sampling.samplers.er_sde import sample_er_sde
from comfymesh.diffusion.sampling.samplers.euler import sample_euler, sample_euler_ancestral
from comfymesh.diffusion.sampling.samplers.gradient_estimation import make_gradient_estimation
from comfymesh.diffusion.sampling.samplers.heun import sample_heun
from comfymesh.diffusion.sampling.samplers.heunpp2 import sample_heunpp2
from comfymesh.diffusion.sampling.samplers.ipndm import make_ipndm
from comfymesh.diffusion.sampling.samplers.lcm import sample_ddpm, sample_lcm
from comfymesh.diffusion.sampling.samplers.lms import sample_lms
from comfymesh.diffusion.sampling.samplers.rectified_flow import (
    sample_dpm_2_ancestral_rf,
    sample_dpmpp_2s_ancestral_rf,
    sample_euler_ancestral_rf,
)
from comfymesh.diffusion.sampling.samplers.res_multistep import make_res_multistep
from comfymesh.diffusion.sampling.samplers.sa_solver import make_sa_solver
from comfymesh.diffusion.sampling.samplers.seeds import make_seeds_2, sample_seeds_3
from comfymesh.diffusion.sampling.samplers.uni_pc import make_uni_pc

SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)

_BY_NAME: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_cfg_pp": make_euler_cfg_pp(ancestral=False),
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": make_euler_cfg_pp(ancestral=True),
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "exp_heun_2_x0": make_seeds_2(r=1.0, solver="phi_2", stochastic=False),
    "exp_heun_2_x0_sde": make_seeds_2(r=1.0, solver="phi_2"),
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": make_dpmpp_sde(),
    "dpmpp_sde_gpu": make_dpmpp_sde(on_device=True),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": make_dpmpp_2m_sde("midpoint"),
    "dpmpp_2m_sde_gpu": make_dpmpp_2m_sde("midpoint", on_device=True),
    "dpmpp_2m_sde_heun": make_dpmpp_2m_sde("heun"),
    "dpmpp_2m_sde_heun_gpu": make_dpmpp_2m_sde("heun", on_device=True),
    "dpmpp_3m_sde": make_dpmpp_3m_sde(),
    "dpmpp_3m_sde_gpu": make_dpmpp_3m_sde(on_device=True),
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": make_ipndm(variable=False),
    "ipndm_v": make_ipndm(variable=True),
    "deis": sample_deis,
    "res_multistep": make_res_multistep(),
    "res_multistep_cfg_pp": make_res_multistep(cfg_pp=True),
    "res_multistep_ancestral": make_res_multistep(ancestral=True),
    "res_multistep_ancestral_cfg_pp": make_res_multistep(ancestral=True, cfg_pp=True),
    "gradient_estimation": make_gradient_estimation(),
    "gradient_estimation_cfg_pp": make_gradient_estimation(cfg_pp=True),
    "er_sde": sample_er_sde,
    "seeds_2": make_seeds_2(),
    "seeds_3": sample_seeds_3,
    "sa_solver": make_sa_solver(),
    "sa_solver_pece": make_sa_solver(pece=True),
    "ddim": sample_euler,  # same update; only ComfyUI's inpainting re-noise differs
    "uni_pc": make_uni_pc("bh1"),
    "uni_pc_bh2": make_uni_pc("bh2"),
}
SAMPLERS: dict[str, Sampler] = {name: _BY_NAME[name] for name in SAMPLER_NAMES}
# samplers that read each evaluation's unconditional prediction (the runner sets the guider's keep_uncond)
CFG_PP_SAMPLERS = frozenset(name for name in SAMPLER_NAMES if name.endswith("_cfg_pp"))
IMPLEMENTED_SAMPLERS: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n in SAMPLERS)
# ComfyUI runs these in their rectified-flow form on flow (CONST) models
# (the others read SamplerEnv.flow: half-log-SNR time, the flow's noise scaling)
FLOW_SAMPLERS: dict[str, Sampler] = {"euler_ancestral": sample_euler_ancestral_rf,
                                     "dpm_2_ancestral": sample_dpm_2_ancestral_rf,
                                     "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral_rf}

__all__ = ["CFG_PP_SAMPLERS", "FLOW_SAMPLERS", "IMPLEMENTED_SAMPLERS", "SAMPLERS", "SAMPLER_NAMES", "Denoiser", "Sampler",
           "SamplerEnv", "StepCallback"]
