"""Covariance kernels for time (Γ) and space (Σ). Every implementation is imported here, so that
LightningCLI resolves short names (``class_path: Matern``), and listed in ``KERNELS``."""

from stdiff._validation import lookup
from stdiff.kernels.base import Kernel, Product, Scaled, Separable, StationaryKernel, Sum, check_coordinates
from stdiff.kernels.stationary import (
    RBF,
    GeneralizedCauchy,
    LogarithmicDecay,
    Matern,
    Periodic,
    PoweredExponential,
    RationalQuadratic,
    Tabulated,
    White,
)

KERNELS: dict[str, type[Kernel]] = {
    cls.__name__: cls
    for cls in (
        PoweredExponential,
        GeneralizedCauchy,
        LogarithmicDecay,
        RBF,
        Matern,
        RationalQuadratic,
        Periodic,
        White,
        Tabulated,
        Sum,
        Product,
        Scaled,
        Separable,
    )
}


def get_kernel(name: str) -> type[Kernel]:
    """The kernel class registered as ``name``; an unknown name lists the valid ones."""
    return lookup("kernel", KERNELS, name)


__all__ = [
    "KERNELS",
    "RBF",
    "GeneralizedCauchy",
    "Kernel",
    "LogarithmicDecay",
    "Matern",
    "Periodic",
    "PoweredExponential",
    "Product",
    "RationalQuadratic",
    "Scaled",
    "Separable",
    "StationaryKernel",
    "Sum",
    "Tabulated",
    "White",
    "check_coordinates",
    "get_kernel",
]
