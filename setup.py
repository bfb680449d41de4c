"""The compiled accelerator of the frame codec (protocol/_speedups.c); everything else about
the package is in pyproject.toml.

`optional=True`: where it cannot be compiled (no C compiler, no OpenSSL headers) the install
still succeeds and aquafleet runs on the pure-Python twins (protocol/speedups.py says which
one is in use; `aquafleet doctor` and the gateway's startup log too)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aquafleet.protocol._speedups",
            sources=["protocol/_speedups.c"],
            libraries=["crypto"],  # SHA-256 from the OpenSSL that Python's hashlib uses too
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
                "-Wno-cast-function-type",
            ],
            optional=True,
        )
    ]
)
