"""Builds the Cython routing kernels; everything else is declared in pyproject.toml."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

kernels = Extension(
    "nodedb_cluster.routing._kernels",
    ["cython/routing_kernels.pyx"],
    include_dirs=[numpy.get_include(), "cython/third_party/xxhash"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3"],
)

setup(
    ext_modules=cythonize(
        [kernels],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
