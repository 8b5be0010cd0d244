"""A plain (non-editable) install has what the CLI needs: the wheel ships the configs, and an
installed dpjax run from another directory finds them (no experiments/ folder beside it)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_configs_and_an_installed_dpjax_loads_them(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "dpjax", source / "dpjax", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dpjax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("multimodal_diffusion", "multimodal_bc", "pusht_keypoints", "pusht_image"):
        assert f"dpjax/configs/{config}.py" in names, sorted(names)[:20]
    assert not any(n.startswith(("tests/", "experiments/")) for n in names)

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # a wheel is a zip laid out as site-packages
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import dpjax, dpjax.config as c\n"
        "print(dpjax.__file__)\n"
        "for name in c.config_names():\n"
        "    print(name, c.load_config_file(name).policy.kind)\n"
        "print('PAPER', c.load_config_file('pusht_keypoints:PAPER').policy.denoiser.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site)), lines[0]  # the installed copy, not the checkout
    assert lines[1:] == [
        "multimodal_bc bc",
        "multimodal_diffusion diffusion",
        "pusht_image diffusion",
        "pusht_keypoints diffusion",
        "PAPER unet1d",
    ]


def test_the_public_surface_resolves_to_the_library():
    import dpjax
    from dpjax.config import TrainConfig
    from dpjax.policy.loading import load_policy
    from dpjax.training.loop import train

    assert dpjax.TrainConfig is TrainConfig and dpjax.train is train
    assert dpjax.load_policy is load_policy
    for name in dpjax.__all__:
        assert callable(getattr(dpjax, name)), name
    with pytest.raises(AttributeError, match="no_such_thing"):
        dpjax.no_such_thing  # noqa: B018
