"""The methods the prediction protocol knows: a jitted core per name plus the protocol's defaults.

``Method("mf", {"rank": 10})`` or ``Method.parse("mf:rank=10,reg=0.05")`` names a registered method
with option overrides; the options a user may set are read from the core's signature, so an unknown
option is a ``ValueError`` naming it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from jaxforget.completion._common import check_choice, check_options
from jaxforget.completion.additive import fit_additive
from jaxforget.completion.knn import fit_knn
from jaxforget.completion.logistic import fit_logistic_mf
from jaxforget.completion.low_rank import fit_low_rank, fit_soft_impute
from jaxforget.completion.sgd_mf import fit_svd_sgd


@dataclasses.dataclass(frozen=True)
class _Registered:
    """A jitted core plus the defaults the protocol uses where they differ from the core's own."""

    core: Callable[..., Any]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # set by the method name
    sequential: bool = False
    """Solve the protocol's problems one after another (``lax.map``) instead of vmapped: ``svd``'s
    per-rating SGD, a scan of scalar steps, ran 2.7x faster so (15 problems of 17 x 2,000 on a 2-core
    CPU: 0.19 s vs 0.52 s per 20 epochs)."""

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option a user may set, with its value in the protocol."""
        params = inspect.signature(self.core).parameters
        own = {n: p.default for n, p in params.items()
               if p.kind is p.KEYWORD_ONLY and n not in ("seed", "init")}  # set by the caller, not the user
        return {n: v for n, v in {**own, **self.overrides}.items() if n not in self.fixed}


# Defaults for prediction. The ridge terms of the additive model, of the KNN baselines and of MF are
# small because a test row has only k ~ 30 revealed entries: surprise's ALS defaults (15 / 10) would
# shrink its offset by a third (measured: KNNBaseline RMSE 0.121 -> 0.114 on the benchmark matrix).
# The reference code's SGD baselines (per-rating reg 0.02) are nearly unregularised too. ALS MF
# converges in ~10 sweeps here; 20 leaves a margin. KNN neighbourhood and logistic defaults are the
# paper's (k=40, min_k=1, msd; rank 5, L2 0.1, step 0.001, 5,000 steps).
_SMALL_RIDGE_BASELINES = dict(baseline_reg_row=1.0, baseline_reg_col=1.0, baseline_epochs=50)
METHODS: dict[str, _Registered] = {
    "additive": _Registered(fit_additive, dict(reg_row=1.0, reg_col=1.0, n_epochs=50)),
    "knn": _Registered(fit_knn, dict(sim="msd", **_SMALL_RIDGE_BASELINES), dict(rule="basic")),
    "knn_baseline": _Registered(fit_knn, dict(sim="msd", **_SMALL_RIDGE_BASELINES), dict(rule="baseline")),
    "mf": _Registered(fit_low_rank, dict(rank=5, biased=True, reg=0.1, reg_bias=0.1, n_iters=20)),
    # the reference code's surprise.SVD, update for update (its defaults are the reference settings)
    "svd": _Registered(fit_svd_sgd, sequential=True),
    "soft_impute": _Registered(fit_soft_impute, dict(lam=None, max_rank=None)),
    "logistic_mf": _Registered(fit_logistic_mf, dict(rank=5, biased=True)),
    "logistic_additive": _Registered(fit_logistic_mf, {}, dict(rank=0, biased=True)),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method name with option overrides, e.g. ``Method("mf", {"rank": 10})``.

    :meth:`parse` reads the command-line form ``"mf:rank=10,reg=0.05"``.
    """

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("method", self.name, METHODS)
        reg = METHODS[self.name]
        check_options(f"method {self.name!r}", self.options, reg.defaults)
        for key, value in self.options.items():
            error = _option_error(key, value, reg.defaults[key])
            if error:
                raise ValueError(f"method {self.name!r}: option {key}={value!r} {error}")

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    @property
    def resolved(self) -> dict[str, Any]:
        return {**METHODS[self.name].defaults, **self.options, **METHODS[self.name].fixed}

    @property
    def link(self) -> str:
        return "logit" if METHODS[self.name].core is fit_logistic_mf else "identity"

    @classmethod
    def parse(cls, text: str) -> "Method":
        return cls(*parse_spec(text))


_COUNTS = ("rank", "max_rank", "k", "n_iters", "n_epochs", "baseline_epochs")
"""Integer options that count something: at least 1 (``min_k`` may be 0)."""


def _option_error(key: str, value: Any, default: Any) -> str | None:
    """Why `value` is not a valid value of option `key` (whose default is `default`), or None."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if isinstance(default, bool) and not isinstance(value, bool):
        return "must be true or false"
    if numeric or (default is None and key in _COUNTS + ("lam",)):
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if isinstance(default, int) and not isinstance(value, int) or key in _COUNTS and not isinstance(value, int):
            return "must be an integer"
        if not math.isfinite(value):
            return "must be finite"
        if key in _COUNTS and value < 1:
            return "must be >= 1"
        if value < 0:
            return "must be >= 0"
    if isinstance(default, str) and not isinstance(value, str):
        return "must be a name"
    return None


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:opt=value,..."`` -> ``(name, {opt: value})``; values become bool, None, int, float or str."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method option {item!r} in {text!r} is not of the form name=value")
        options[key.strip()] = _parse_value(value.strip())
    return name.strip(), options


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


