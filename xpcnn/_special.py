"""Special functions the array API standard lacks, written on it: the error function.

``erf(xp, x)`` is accurate to 1 ulp in float64 and 2 ulp in float32 (tested against mpmath and PyTorch). It is
odd, so it is computed for ``a = min(|x|, 6)`` and given x's sign (erf(6) rounds to 1 in float64 and float32; the
clamp keeps every intermediate finite for any x, infinities included), in two ranges:

    a < 1:   erf(a)  = a + a * P(a**2)
    a >= 1:  erfc(a) = exp(-a**2) * G(y) / (a + 3),   y = 2.6 - 14.4 / (a + 3),   erf(a) = 1 - erfc(a)

``G(y) = (a + 3) exp(a**2) erfc(a)`` is smooth in ``y``, which maps ``a`` in [1, 6] onto [-1, 1] (``y`` is the
affine image of ``(a - 3) / (a + 3)``), and ``P(a**2) = erf(a) / a - 1``. ``P`` and ``G`` are Chebyshev
interpolants of those functions computed in 60-digit arithmetic (mpmath), truncated where the neglected
coefficients sum to less than 2**-56 (float64) or 2**-26 (float32) relative to erf, and written in monomial form for
Horner's rule.
"""

from __future__ import annotations

from ._dispatch import updates_in_place

ERF_CLAMP = 6.0
"""|x| beyond which erf(x) rounds to +-1 in float32 and float64."""

_SERIES_LIMIT = 1.0  # a < 1: the series in a**2; a >= 1: through erfc
_SHIFT = 3.0  # G's variable is y = _Y_OFFSET - _Y_SCALE / (a + _SHIFT)
_Y_OFFSET, _Y_SCALE = 2.6, 14.4

# Coefficients of P (in a**2) and G (in y), lowest degree first, for float64 and for float32 (and narrower).
_P64 = (
    0.12837916709551256, -0.37612638903183543, 0.1128379167094513, -0.026866170643256995, 0.005223977607269946,
    -0.0008548325982543225, 0.00012055295112667001, -1.4924740785377576e-05, 1.6447471190594618e-06,
    -1.6208829856810202e-07, 1.3721520406351094e-08, -7.798543850549947e-10,
)
_G64 = (
    1.1519074596928367, -0.41188209621002847, 0.11683673753802074, -0.025474072800055956, 0.003933868783798886,
    -0.00032354378705952343, -1.6087764752907102e-05, 7.2462510048463275e-06, -2.819938940759968e-07,
    -1.3352052442554249e-07, 1.1449480871654831e-08, 2.929912175539457e-09, -2.9728436610962375e-10,
    -7.244020977354063e-11, 5.8306840630118466e-12,
)
_P32 = (
    0.12837916588150264, -0.3761262690358044, 0.11283597463488053, -0.026854328796067244, 0.005189311942686617,
    -0.0008018854992786387, 7.882497110086663e-05,
)
_G32 = (
    1.1519074617024339, -0.41188133099131186, 0.11683667285312824, -0.025480218492299835, 0.003934195376692123,
    -0.0003111559176244144, -1.6620549992230338e-05,
)


def erf(xp, x):
    """The error function ``2/sqrt(pi) * integral_0^x exp(-t**2) dt`` of a real floating array, elementwise.

    Keeps x's dtype and device; ``erf(+-0) = +-0``, ``erf(+-inf) = +-1``, ``erf(NaN) = NaN``.
    """
    p, g = (_P64, _G64) if xp.finfo(x.dtype).bits >= 64 else (_P32, _G32)
    a = xp.clip(xp.abs(x), max=ERF_CLAMP)  # NaN stays NaN (clip: no device scalar made of the bound)
    a2 = a * a
    series = a + a * _horner(p, a2)
    q = 1.0 / (a + _SHIFT)
    through_erfc = 1.0 - xp.exp(-a2) * _horner(g, _Y_OFFSET - _Y_SCALE * q) * q
    return xp.copysign(xp.where(a < _SERIES_LIMIT, series, through_erfc), x)


def _horner(coefficients, t):
    """sum(c[k] * t**k), lowest degree first (in place, on a new array, where the library allows it)."""
    result = coefficients[-1] * t + coefficients[-2]
    in_place = updates_in_place(result)
    for c in reversed(coefficients[:-2]):
        if in_place:
            result *= t
            result += c
        else:
            result = result * t + c
    return result
