"""Lists the packages under their installed names; everything else is in pyproject.toml.

The folders core/, plugins/, adapters/ and weights/ install as artchain.core, artchain.plugins, ...
(see [tool.setuptools] package-dir); setuptools' own discovery would name them by folder.
"""
from setuptools import find_packages, setup

FOLDERS = {"artchain": "artchain", "core": "artchain.core", "plugins": "artchain.plugins",
           "adapters": "artchain.adapters", "weights": "artchain.weights"}


def installed_packages() -> list[str]:
    packages = []
    for folder, name in FOLDERS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder, exclude=["tests", "*.tests"])]
    return packages


setup(packages=installed_packages())
