"""The trained generators that ship inside pyquant (``pyquant/data/<name>.pyquant``).

``digits32``: a small DCGAN-style generator (Dense + BatchNorm + LeakyReLU, three ConvTranspose2d with
BatchNorm + LeakyReLU, tanh) trained on scikit-learn's 8x8 handwritten digits upscaled to 32x32 (the data ships
with scikit-learn, nothing is downloaded). Latent: 64 standard-normal values; images: (1, 32, 32) in [-1, 1].
It was trained by ``pyquant/data/train_builtin.py`` (seeded; the script says how long it took) and converted to
pyquant's model file with :func:`export_builtin` (needs torch; run it outside the source tree, whose
``pyquant/`` folder has no compiled extension)::

    cd /tmp && python -c "from pyquant.builtin import export_builtin as e; \
        e('/work/builtin/digits32_generator.pt', '/work/main/pyquant/data/digits32.pyquant')"

Loading a built-in model needs neither torch nor scikit-learn.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import List, Optional, Union

__all__ = ["builtin_generator", "builtin_generators", "builtin_path", "export_builtin", "DEFAULT_BUILTIN"]

DEFAULT_BUILTIN = "digits32"
_SUFFIX = ".pyquant"

# What each built-in model was trained on: the report uses it for the distribution measures.
DATASETS = {"digits32": "sklearn-digits"}


def _data_dir():
    return resources.files("pyquant").joinpath("data")


def builtin_generators() -> List[str]:
    """Names of the trained generators that ship with pyquant (``["digits32"]``)."""
    names = []
    for entry in _data_dir().iterdir():
        if entry.name.endswith(_SUFFIX) and entry.is_file():
            names.append(entry.name[: -len(_SUFFIX)])
    return sorted(names)


def builtin_path(name: Optional[str] = None) -> Path:
    """Path of the file of built-in model ``name`` (default ``"digits32"``); ValueError for an unknown name."""
    name = DEFAULT_BUILTIN if name is None or name == "" else name
    if not isinstance(name, str):
        raise TypeError(f"builtin_generator: name must be a str, got {type(name).__name__}")
    available = builtin_generators()
    if name not in available:
        raise ValueError(f"no built-in generator named {name!r}; built-in generators: "
                         f"{', '.join(available) if available else 'none (the data files are missing)'}")
    # pyquant is installed as files (scikit-build wheels are never zip-imported), so this is a real path
    return Path(str(_data_dir().joinpath(name + _SUFFIX)))


def builtin_generator(name: Optional[str] = None):
    """The built-in trained generator ``name`` (default ``"digits32"``) as a :class:`pyquant.Generator`.

    >>> g = pyquant.builtin_generator()          # digits32: latent (64,) -> images (1, 32, 32), NCHW
    >>> images = g.generate(16, seed=0)          # float32 in [-1, 1]
    """
    from .model import load
    return load(builtin_path(name))


def export_builtin(state_dict_path: Union[str, os.PathLike], out: Optional[Union[str, os.PathLike]] = None,
                   name: str = DEFAULT_BUILTIN):
    """Convert the trained PyTorch ``state_dict`` written by ``pyquant/data/train_builtin.py`` into pyquant's
    model file (default: ``pyquant/data/<name>.pyquant`` next to this module) and return the Generator.

    The state_dict is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) into
    ``train_builtin.build_generator()``, put in eval mode (BatchNorm running statistics) and imported with
    :func:`pyquant.from_torch` (BatchNorm folded into the layer before it). Needs torch.
    """
    import importlib.util

    import torch

    from .model import from_torch

    script = Path(__file__).resolve().parent / "data" / "train_builtin.py"
    spec = importlib.util.spec_from_file_location("pyquant_train_builtin", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build_generator()
    net.load_state_dict(torch.load(str(state_dict_path), map_location="cpu", weights_only=True))
    net.eval()
    model = from_torch(net, name=name)
    out = Path(out) if out is not None else script.parent / (name + _SUFFIX)
    model.save(out)
    os.chmod(out, 0o644)  # the saved file is private (a temporary file renamed); package data is world-readable
    return model
