"""Kernel contract, parametrised over the registry: symmetry, positive definiteness, closed-form
values, composition, and errors for bad parameters."""

import math

import pytest
import torch
from conftest import stdiff_subclasses

from stdiff.kernels import (
    KERNELS,
    RBF,
    GeneralizedCauchy,
    Kernel,
    LogarithmicDecay,
    Matern,
    Periodic,
    PoweredExponential,
    Product,
    RationalQuadratic,
    Scaled,
    Separable,
    Sum,
    Tabulated,
    White,
    get_kernel,
)
from stdiff.truth import grid

# One configured instance per registered kernel (a new kernel must add one here).
EXAMPLES = {
    "PoweredExponential": PoweredExponential(lengthscale=2.0, power=0.5),
    "GeneralizedCauchy": GeneralizedCauchy(lengthscale=2.0, alpha=1.0, beta=3.0),
    "LogarithmicDecay": LogarithmicDecay(lengthscale=2.0, power=1.0),
    "RBF": RBF(lengthscale=2.0),
    "Matern": Matern(lengthscale=2.0, nu=1.5),
    "RationalQuadratic": RationalQuadratic(lengthscale=2.0, alpha=0.5),
    "Periodic": Periodic(lengthscale=0.3, period=7.3),
    "White": White(),
    "Sum": Sum([RBF(2.0), White()]),
    "Product": Product([PoweredExponential(3.0), Periodic(0.3, 7.3)]),
    "Scaled": Scaled(Matern(2.0, nu=2.5), scale=3.0),
    "Separable": Separable([PoweredExponential(1.8), RBF(2.4)]),  # one kernel per axis
    "Tabulated": Tabulated(RBF(2.0)(grid((6, 7))).tolist(), shape=[6, 7]),  # a matrix on one grid
}

# Two 2-D points at distance 3 (Δ = (1.8, 2.4)), and the kernel value expected there.
P0, P1 = torch.tensor([[0.0, 0.0]], dtype=torch.float64), torch.tensor([[1.8, 2.4]], dtype=torch.float64)
r = 3.0 / 2.0  # distance over lengthscale
s3, s5 = math.sqrt(3) * r, math.sqrt(5) * r
EXPECTED = {
    "PoweredExponential": math.exp(-(r**0.5)),
    "GeneralizedCauchy": (1 + r) ** -3.0,
    "LogarithmicDecay": 1 / (1 + math.log(1 + r)),
    "RBF": math.exp(-0.5 * r**2),
    "Matern": (1 + s3) * math.exp(-s3),
    "RationalQuadratic": (1 + r**2) ** -0.5,
    "Periodic": math.exp(-2 * (math.sin(math.pi * 1.8 / 7.3) ** 2 + math.sin(math.pi * 2.4 / 7.3) ** 2) / 0.09),
    "White": 0.0,
    "Sum": math.exp(-0.5 * r**2),
    "Product": math.exp(-1.0)
    * math.exp(-2 * (math.sin(math.pi * 1.8 / 7.3) ** 2 + math.sin(math.pi * 2.4 / 7.3) ** 2) / 0.09),
    "Scaled": 3.0 * (1 + s5 + s5**2 / 3) * math.exp(-s5),
    "Separable": math.exp(-1.0) * math.exp(-0.5),
}
EXPECTED_AT_ZERO = {"Sum": 2.0, "Scaled": 3.0}


def test_registry_is_the_set_of_concrete_subclasses():
    assert set(KERNELS.values()) == stdiff_subclasses(Kernel)
    assert set(EXAMPLES) == set(KERNELS)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("space", [(40,), (6, 7)], ids=["1d", "2d"])
def test_symmetric_and_positive_definite(name, space):
    kernel = EXAMPLES[name]
    if name == "Tabulated":  # tabulated on this grid from RBF(2)
        kernel = Tabulated(RBF(2.0)(grid(space)).tolist(), shape=list(space) if len(space) > 1 else None)
    if name == "Separable":  # one kernel per axis of this grid
        kernel = Separable(kernel.kernels[: len(space)])
    k = kernel(grid(space))
    assert k.dtype == torch.float64 and k.shape == (math.prod(space),) * 2
    torch.testing.assert_close(k, k.T, rtol=0, atol=1e-14)
    evals = torch.linalg.eigvalsh(k)
    assert evals[0] > 1e-10 * evals[-1], f"{name}: smallest eigenvalue {evals[0]:.3e}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_closed_form_values(name):
    kernel = EXAMPLES[name]
    if name == "Tabulated":  # defined on its grid's integer points only: RBF(2) there
        assert kernel(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 3.0]])).item() == pytest.approx(
            math.exp(-0.5 * 13 / 4), rel=1e-12
        )
        with pytest.raises(ValueError, match="Tabulated covers the integer grid points"):
            kernel(P0, P1)
        return
    assert kernel(P0, P1).item() == pytest.approx(EXPECTED[name], rel=1e-12, abs=1e-15)
    assert kernel(P1, P0).item() == pytest.approx(EXPECTED[name], rel=1e-12, abs=1e-15)
    assert kernel(P0, P0).item() == pytest.approx(EXPECTED_AT_ZERO.get(name, 1.0), rel=1e-12)


@pytest.mark.parametrize(
    "nu,expected", [(0.5, math.exp(-r)), (1.5, (1 + s3) * math.exp(-s3)), (2.5, (1 + s5 + s5**2 / 3) * math.exp(-s5))]
)
def test_matern_smoothness_values(nu, expected):
    assert Matern(2.0, nu=nu)(P0, P1).item() == pytest.approx(expected, rel=1e-12)


def test_powered_exponential_special_cases():
    x = torch.arange(10.0)
    torch.testing.assert_close(PoweredExponential(2.0, power=1.0)(x), Matern(2.0, nu=0.5)(x))
    torch.testing.assert_close(PoweredExponential(math.sqrt(2) * 2.0, power=2.0)(x), RBF(2.0)(x))


def test_operators_build_composites():
    a, b = RBF(2.0), White()
    x = torch.arange(5.0)
    assert isinstance(a + b, Sum) and isinstance(a * b, Product)
    assert isinstance(2.0 * a, Scaled) and isinstance(a * 2.0, Scaled)
    torch.testing.assert_close((a + b)(x), a(x) + b(x))
    torch.testing.assert_close((a * b)(x), a(x) * b(x))
    torch.testing.assert_close((2.0 * a)(x), 2.0 * a(x))


@pytest.mark.parametrize("lengthscale", [0.3, 1.0, 4.0, 16.0])
@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("space", [(64,), (16, 16)], ids=["1d", "2d"])
def test_logarithmic_decay_positive_definite_on_grids(lengthscale, power, space):
    evals = torch.linalg.eigvalsh(LogarithmicDecay(lengthscale, power)(grid(space)))
    assert evals[0] > 0


def test_logarithmic_decay_decays_like_inverse_log():
    h = torch.tensor([[1e6], [1e12]])
    k = LogarithmicDecay(lengthscale=1.0)(torch.zeros(1, 1), h)[0]
    torch.testing.assert_close(k * torch.log(h[:, 0].double()), torch.ones(2, dtype=torch.float64), rtol=0.1, atol=0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PoweredExponential(1.0, power=2.5), r"PoweredExponential.power must lie in \(0.0, 2.0\], got 2.5"),
        (lambda: PoweredExponential(1.0, power=0.0), r"PoweredExponential.power"),
        (lambda: RBF(lengthscale=0.0), r"RBF.lengthscale must be a finite number > 0, got 0.0"),
        (lambda: Matern(lengthscale=-1.0), r"Matern.lengthscale .* got -1.0"),
        (lambda: Matern(1.0, nu=2.0), r"Matern.nu must be one of 0.5, 1.5, 2.5, got 2.0"),
        (lambda: GeneralizedCauchy(1.0, alpha=3.0), r"GeneralizedCauchy.alpha"),
        (lambda: GeneralizedCauchy(1.0, beta=0.0), r"GeneralizedCauchy.beta"),
        (lambda: LogarithmicDecay(1.0, power=-1.0), r"LogarithmicDecay.power"),
        (lambda: RationalQuadratic(1.0, alpha=0.0), r"RationalQuadratic.alpha"),
        (lambda: Periodic(1.0, period=0.0), r"Periodic.period"),
        (lambda: Scaled(RBF(), scale=-2.0), r"Scaled.scale"),
        (lambda: Sum([]), r"Sum.kernels must hold at least one kernel"),
        (lambda: RBF(lengthscale=float("nan")), r"RBF.lengthscale"),
    ],
)
def test_bad_parameters_name_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(
        ValueError, match=r"unknown kernel 'Matren'\. Did you mean 'Matern'\? Valid kernel names: .*RBF"
    ):
        get_kernel("Matren")
    assert get_kernel("RBF") is RBF


# GPyTorch's documented forms (gpytorch.kernels), written out so the check runs without it:
# RBF exp(-h²/(2ℓ²)), RQ (1 + h²/(2αℓ²))^(-α), Periodic exp(-2 sin²(πh/p)/ℓ), Matérn ν as R&W.
GPYTORCH_FORMULAS = {
    "RBFKernel": lambda h, ls, **_: torch.exp(-(h**2) / (2 * ls**2)),
    "RQKernel": lambda h, ls, alpha: (1 + h**2 / (2 * alpha * ls**2)) ** -alpha,
    "PeriodicKernel": lambda h, ls, period_length: torch.exp(-2 * torch.sin(math.pi * h / period_length) ** 2 / ls),
    "MaternKernel": lambda h, ls, nu: Matern(1.0, nu).profile(h / ls),
}
# (stdiff kernel, GPyTorch kernel, its lengthscale, its other arguments): the conventions the docstrings state
CONVENTIONS = [
    (RBF(2.0), "RBFKernel", 2.0, {}),
    (PoweredExponential(2.0, power=2.0), "RBFKernel", 2.0 / math.sqrt(2), {}),
    (PoweredExponential(3.0, power=1.0), "MaternKernel", 3.0, {"nu": 0.5}),
    (Matern(1.5, nu=2.5), "MaternKernel", 1.5, {"nu": 2.5}),
    (RationalQuadratic(2.0, alpha=0.7), "RQKernel", 2.0, {"alpha": 0.7}),
    (GeneralizedCauchy(2.0, alpha=2.0, beta=3.0), "RQKernel", 2.0 / math.sqrt(3.0), {"alpha": 1.5}),
    (Periodic(0.8, period=5.0), "PeriodicKernel", 0.8**2, {"period_length": 5.0}),
]
CONVENTION_IDS = [f"{type(k).__name__}-{name}" for k, name, _, _ in CONVENTIONS]


@pytest.mark.parametrize("kernel,name,lengthscale,kwargs", CONVENTIONS, ids=CONVENTION_IDS)
def test_documented_gpytorch_conventions_hold_for_its_formulas(kernel, name, lengthscale, kwargs):
    t = torch.linspace(0, 12, 25, dtype=torch.float64)[:, None]
    h = (t - t.T).abs()
    assert torch.allclose(kernel(t), GPYTORCH_FORMULAS[name](h, torch.tensor(lengthscale), **kwargs), atol=1e-12)


@pytest.mark.parametrize("kernel,name,lengthscale,kwargs", CONVENTIONS, ids=CONVENTION_IDS)
def test_documented_gpytorch_conventions_hold_for_gpytorch_itself(kernel, name, lengthscale, kwargs):
    gpytorch = pytest.importorskip("gpytorch")  # where installed (not a dependency): the library, not our reading of it
    theirs = getattr(gpytorch.kernels, name)(**{k: v for k, v in kwargs.items() if k == "nu"}).double()
    theirs.lengthscale = lengthscale
    for key in ("alpha", "period_length"):
        if key in kwargs:
            setattr(theirs, key, kwargs[key])
    t = torch.linspace(0, 12, 25, dtype=torch.float64)[:, None]
    with torch.no_grad():
        assert torch.allclose(kernel(t), theirs(t, t).to_dense(), atol=1e-6)
