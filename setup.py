from setuptools import find_packages, setup

# The top-level kernels/ folder installs as `fastmine_kernels`: a bare `kernels` import
# name is taken on PyPI (Hugging Face's kernel hub) and would shadow or be shadowed.
# benchmarks/ installs as `fastmine_benchmarks` and adds `fastmine bench` through the
# `fastmine.commands` entry-point group (the library itself never imports it).
setup(
    name="fastmine",
    version="0.1.0",
    description="Mine and reprogram frozen pretrained GAN generators for small target domains",
    python_requires=">=3.10",
    packages=find_packages(include=["fastmine", "fastmine.*"]) + ["fastmine_kernels", "fastmine_benchmarks"],
    package_dir={"fastmine_kernels": "kernels", "fastmine_benchmarks": "benchmarks"},
    package_data={"fastmine": ["metrics/weights/*", "catalogue.yaml"]},
    install_requires=[
        # a range real GPU users satisfy; CPU machines pin torch==2.13.0 in README/.ci/run
        "torch>=2.6,<2.15",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pyyaml>=6",
        "filelock>=3.8",  # one process downloads a file into the cache, the others wait (fastmine/hub.py)
        "tqdm>=4.60",
        "pillow>=9",
        "scikit-learn>=1.2",
        "scipy>=1.10",
        "torchmetrics>=1.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        # triton ships with CUDA torch builds; CPU installs take it for the interpreter tests
        "triton": ["triton>=3.1"],
        "test": ["pytest>=7", "pytest-xdist>=3", "triton>=3.1", "ruff>=0.6"],
        "deepspeed": ["deepspeed>=0.15"],
        # BigGAN adapter for conditional mining (a local folder, or a catalogue name fetched once)
        "biggan": ["pytorch-pretrained-biggan>=0.1.1"],
        # Inception-v3 for FID / KID / precision-recall on 3-channel images (its weights fetched on first use)
        "inception": ["torch-fidelity>=0.3"],
        # offline TensorBoard event files for every run (log.trackers, fastmine/trackers.py)
        "tensorboard": ["tensorboard>=2.10"],
    },
    entry_points={"console_scripts": ["fastmine=fastmine.cli:main"],
                  "fastmine.commands": ["bench=fastmine_benchmarks.bench_step:main",
                                         "check-gpu=fastmine_benchmarks.check_gpu:main"]},
)
