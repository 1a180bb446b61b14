"""Only what pyproject.toml cannot say: the wheel carries the repository's configs/ as siglip_lightning/configs.

configs/ stays at the repository root (README commands, Makefile and tests name configs/...) and is the one
copy of the YAML: the build maps the package folder siglip_lightning/configs onto it, so a wheel installs the
files next to the code (siglip_lightning/config_files.py finds either place). Everything else is in
pyproject.toml.
"""
from pathlib import Path

from setuptools import find_packages, setup

# Each folder under configs/ is named as a (data-only) package: setuptools warns about folders of
# package data that are not listed; subfolders follow the mapping of siglip_lightning.configs.
CONFIGS = ["siglip_lightning.configs"] + sorted(
    "siglip_lightning.configs." + ".".join(p.relative_to("configs").parts)
    for p in Path("configs").rglob("*") if p.is_dir() and "__pycache__" not in p.parts)

setup(
    packages=find_packages(include=["siglip_lightning", "siglip_lightning.*"]) + CONFIGS,
    package_dir={"siglip_lightning.configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIGS},
)
