"""Build of the optional C speed-ups (everything else is in pyproject.toml).

``optional=True``: when the extension cannot be compiled (no compiler, no Python
headers) setuptools warns and installs the pure-Python package, which works the same,
only slower (``baedal._speedups.load`` returns None).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "baedal._speedups._records",
            ["src/baedal/_speedups/_records.c"],
            optional=True,
        ),
        Extension(
            "baedal._speedups._mqtt",
            ["src/baedal/_speedups/_mqtt.c"],
            optional=True,
        ),
    ]
)
