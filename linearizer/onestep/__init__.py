"""One-step flow matching with a Linearizer (method.md §2).

A shared invertible network `g` (role 0 encodes noise, role 1 data) and a time-dependent
low-rank `A(t)` define the linear latent ODE `dz/dt = (A(t) - I) z / (1 - t)`. Its multi-step
solution collapses exactly into one operator `B`, so generation, inversion and interpolation of
real images are single passes.

Example:
    >>> from linearizer.onestep import OneStepLinearizer, invert
    >>> model = OneStepLinearizer(cfg); model.build_B()
    >>> x = model.sample(torch.randn(16, *cfg.image_shape))
    >>> x0 = invert(model, x)
"""

from .collapse import collapse, euler_step, reference_collapse, rk4_step, step_operators
from .inversion import interpolate, inverse_B, invert, reconstruct
from .model import OneStepLinearizer, SamplerSpec, noise_like
from .objective import onestep_loss
from .samplers import TimeGrid, integrate, make_grid, resolve_t_end

__all__ = [
    "OneStepLinearizer",
    "SamplerSpec",
    "TimeGrid",
    "collapse",
    "euler_step",
    "integrate",
    "interpolate",
    "inverse_B",
    "invert",
    "make_grid",
    "noise_like",
    "onestep_loss",
    "reconstruct",
    "reference_collapse",
    "resolve_t_end",
    "rk4_step",
    "step_operators",
]
