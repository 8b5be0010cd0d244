"""Provenance helpers that benchmark and experiment result files use."""

import jax

from dpjax.machine import cpu_model, package_version


def test_cpu_model_and_package_versions():
    assert cpu_model().strip()
    assert package_version("jax") == jax.__version__
    assert package_version("no-such-distribution-dpjax") is None
    assert package_version("no-such-distribution-dpjax", "-") == "-"
