"""``MovingBall``: semi-synthetic video whose only randomness is a Gaussian-process trajectory.

A ball (a Gaussian blob) moves over ``size × size`` frames; its centre follows a 2-D GP over the
frames, each coordinate independent with temporal kernel γ, so the true temporal correlation of
the motion is known exactly: ``corr(c_i, c_j) = γ(|i − j|) / γ(0)``. A model trained on the
videos can be checked by recovering the trajectory from generated videos (the intensity
centroid) and comparing its autocorrelation with γ (``trajectory_autocorrelation``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stdiff._validation import check_int, check_positive
from stdiff.data.base import SequenceDataModule
from stdiff.kernels import Kernel, PoweredExponential
from stdiff.seeding import AUXILIARY, generator
from stdiff.truth import KroneckerGP


class MovingBall(SequenceDataModule):
    """Videos ``(B, T, size, size)`` of a ball on a GP trajectory. The videos are not Gaussian, so
    there is no ``truth``; the trajectory's kernel is (``gamma``, ``trajectory_autocorrelation``).

    Args:
        temporal: kernel of each trajectory coordinate over frames (γ).
        frames: T.
        size: frame height and width in pixels.
        amplitude: standard deviation of the centre's coordinates, in pixels (centred on the frame).
        radius: the blob's standard deviation in pixels.
        background: add a fixed smooth texture (the same in every frame and video).
        **kwargs: the base's ``batch_size``, ``num_train``, ``num_val``, ``seed``, ``num_workers``,
            ``num_predict``, ``generate_on`` (see ``SequenceDataModule``).

    Pixels are standardised by constants of the rendering (``offset``, ``scale``), so that data
    are roughly zero-mean, unit-variance like the GP data the defaults are tuned for.
    """

    def __init__(
        self,
        temporal: Kernel | None = None,
        frames: int = 16,
        size: int = 32,
        amplitude: float = 6.0,
        radius: float = 2.5,
        background: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.frames = check_int("frames", frames, 2)
        self.size = check_int("size", size, 4)
        self.amplitude = check_positive("amplitude", amplitude)
        self.radius = check_positive("radius", radius)
        self.temporal = temporal if temporal is not None else PoweredExponential(4.0, 1.0)
        self.trajectory = KroneckerGP(self.temporal, None, self.frames, (2,))  # (T, 2): x and y
        self.background = self._texture() if background else torch.zeros(self.size, self.size)
        self.offset, self.scale = 0.0, 1.0
        probe = self.sample(256, generator(self.seed, AUXILIARY, 0))
        self.offset, self.scale = probe.mean().item(), probe.std().item()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.frames, self.size, self.size)

    @property
    def gamma(self) -> Tensor:
        """The trajectory's temporal covariance Γ (T × T)."""
        return self.trajectory.gamma

    def _texture(self) -> Tensor:
        noise = torch.randn(1, 1, self.size, self.size, generator=generator(self.seed, AUXILIARY, 1))
        kernel = torch.exp(-(torch.arange(-4.0, 5.0) ** 2) / 8.0)
        kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
        smooth = torch.nn.functional.conv2d(noise, kernel[None, None], padding=4)[0, 0]
        return 0.15 * smooth / smooth.std()  # weaker than the ball (peak 1), which must stay visible

    def centres(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """Ball centres ``(n, T, 2)`` in pixels."""
        return self.size / 2 - 0.5 + self.amplitude * self.trajectory.sample(n, generator, device=device)

    def render(self, centres: Tensor) -> Tensor:
        """Standardised videos ``(n, T, size, size)`` from centres ``(n, T, 2)`` in pixels (x, y)."""
        pix = torch.arange(self.size, dtype=centres.dtype, device=centres.device)
        dx = (pix[None, None, None, :] - centres[..., 0, None, None]) ** 2  # (n, T, 1, W)
        dy = (pix[None, None, :, None] - centres[..., 1, None, None]) ** 2  # (n, T, H, 1)
        frames = torch.exp(-(dx + dy) / (2 * self.radius**2)) + self.background.to(centres)
        return (frames - self.offset) / self.scale

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        return self.render(self.centres(n, generator, device))


def trajectory_autocorrelation(videos: Tensor, data: MovingBall) -> Tensor:
    """Autocorrelation by lag ``(T,)`` of the centre recovered from videos ``(n, T, H, W)`` as the
    intensity centroid of the ball (background removed, negative residue clipped), both axes
    pooled; compare with ``γ(h)/γ(0)``."""
    frames = (videos * data.scale + data.offset - data.background).clamp_min(0)
    pix = torch.arange(data.size, dtype=frames.dtype)
    mass = frames.sum((-2, -1)).clamp_min(1e-8)
    cx = (frames.sum(-2) * pix).sum(-1) / mass
    cy = (frames.sum(-1) * pix).sum(-1) / mass
    c = torch.stack([cx, cy], -1)  # (n, T, 2)
    c = c - c.mean((0, 1), keepdim=True)
    t = c.shape[1]
    cov = torch.einsum("nia,nja->ij", c, c) / (2 * len(c))  # (T, T), both coordinates pooled
    return torch.stack([torch.diagonal(cov, h).mean() for h in range(t)]) / torch.diagonal(cov).mean()
