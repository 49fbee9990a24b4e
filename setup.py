"""dtlnd: real-time DTLN noise suppression and echo cancellation for embedded Linux."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "dtlnd" / "__init__.py").read_text(), version)

# ai-edge-litert (the maintained successor of tflite-runtime) has wheels for
# x86_64 and aarch64 (64-bit Pi OS) and needs numpy 2 (through ml_dtypes).
# 32-bit Pi OS (armv7l) falls back to tflite-runtime 2.14, which fails at
# interpreter creation with numpy 2, hence the split pins.
LITERT = "platform_machine != 'armv7l'"
TFLITE = "platform_machine == 'armv7l'"

setup(
    name="dtlnd",
    version=version["__version__"],
    description="Real-time DTLN noise suppression and echo cancellation daemon for embedded Linux",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["dtlnd", "dtlnd.*"]),
    include_package_data=True,
    package_data={"dtlnd": ["*.yaml"]},
    install_requires=[
        f"ai-edge-litert>=1.2; {LITERT}",
        f"numpy>=2.0; {LITERT}",
        f"tflite-runtime==2.14.0; {TFLITE}",
        f"numpy<2; {TFLITE}",
        "pyfftw>=0.13",
        "soundfile>=0.12",
        "soxr>=0.3",
        "sounddevice>=0.4.6",
        "pyyaml>=6.0",
        "sdnotify>=0.3.2",
        "tqdm>=4.60",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["dtlnd = dtlnd.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
