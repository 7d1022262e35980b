"""artchain: plugin-based image-processing chains.

    >>> import artchain
    >>> out = artchain.run("neon,upscale", Image.open("photo.jpg"))
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("artchain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def run(chain, image, **options):
    """Runs `chain` (text such as "neon,upscale") on a PIL image and returns the result image.

    Options are passed to `artchain.core.engine.Engine.run` (device, progress, cancel).
    """
    from .runtime import default_runtime

    return default_runtime().engine.run(chain, image, **options)


__all__ = ["run", "__version__"]
