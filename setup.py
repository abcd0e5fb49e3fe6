"""Build hook: the wheel carries the repository's top-level `conf/` as the package data `apr/conf/`.

    pip install .                                 # a non-editable install: `apr sft ...` finds its configs
    pip wheel --no-deps --no-build-isolation -w dist .

`conf/` stays at the top of the checkout (the layout promises it; Hydra's configs are edited there);
`apr.cli.common.config_dir` finds `apr/conf/` in an installed wheel and `../conf/` in a checkout or an
editable install. Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["apr", "apr.*"]), "apr.conf"],
    package_dir={"apr.conf": "conf"},
    package_data={"apr.conf": ["*.yaml", "**/*.yaml"]},
)
