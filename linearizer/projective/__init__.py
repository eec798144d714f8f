"""The globally projective generative model (method.md §3): `f = g^-1 P g` with `P^2 = P`.

`f(f(x)) = f(x)` holds for every input by construction. Training makes data fixed points and
makes projected noise data-like, so one pass of `f` samples (from noise), denoises, inpaints and
projects out-of-distribution images onto the learnt set.

Example:
    >>> from linearizer.projective import ProjectiveModel, projective_config, denoise
    >>> model = ProjectiveModel(projective_config(rank=16))
    >>> ...                                      # training.fit(get_kind("projective"), model, ...)
    >>> samples = model(torch.randn(16, 1, 32, 32))
"""

from .defaults import projective_config
from .kind import KIND, ProjectiveKind
from .model import ProjectiveModel
from .objective import gaussian_noise, projective_loss, sliced_wasserstein_gaussian
from .uses import (
    add_noise,
    apply_mask,
    box_mask,
    check_images,
    denoise,
    fixed_point_error,
    idempotency_bound,
    idempotency_error,
    inpaint,
    project,
    random_mask,
)

__all__ = [
    "KIND",
    "ProjectiveKind",
    "ProjectiveModel",
    "add_noise",
    "apply_mask",
    "box_mask",
    "check_images",
    "denoise",
    "fixed_point_error",
    "gaussian_noise",
    "idempotency_bound",
    "idempotency_error",
    "inpaint",
    "project",
    "projective_config",
    "projective_loss",
    "random_mask",
    "sliced_wasserstein_gaussian",
]
