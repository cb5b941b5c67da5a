from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="adapters",
    version="0.1.0",
    description="Named, composable adapters (bottleneck, Compacter, LoRA, prefix tuning, ...) for Hugging Face transformers 5",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["adapters", "adapters.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "safetensors",
        "huggingface_hub",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "peft==0.21.*", "sentencepiece", "accelerate>=1.1", "import-linter", "bitsandbytes>=0.45", "torchao", "deepspeed"],
        "docs": ["sphinx"],
        "examples": ["sentencepiece", "tqdm", "accelerate>=1.1"],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
