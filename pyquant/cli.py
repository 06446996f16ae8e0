"""The ``pyquant`` command line: ``info``, ``report``, ``compress``, ``generate``.

MODEL (wherever a command takes one) is ``builtin`` or ``builtin:NAME`` (a generator that ships with pyquant),
a pyquant model file, a Keras ``.keras`` file (loaded with Keras' safe mode), or a PyTorch state_dict
``.pt``/``.pth`` (loaded with ``weights_only=True``) together with ``--arch module:function``, a function
that builds the ``nn.Module`` the state_dict belongs to.

Errors never show a traceback: bad arguments exit with status 2, a missing or invalid model file, an unwritable
output or a missing optional package with status 1, each with one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "load_model", "CliError"]

_EXIT_USAGE = 2
_EXIT_FAILURE = 1


class CliError(Exception):
    """A failure with a message meant for the user (exit status 1, or ``status``)."""

    def __init__(self, message: str, status: int = _EXIT_FAILURE):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage block) and exit status 2."""

    def error(self, message):  # noqa: D401 - argparse's hook
        self.exit(_EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------------------- argument types --
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _sparsity_list(text: str) -> List[float]:
    from .report import parse_sparsities
    try:
        return parse_sparsities(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--sparsity ", "")) from None


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


# ------------------------------------------------------------------------------------------------ models --
def load_model(spec: Optional[str], arch: Optional[str] = None):
    """The Generator named by a MODEL argument (see the module docstring). Raises CliError with a one-line
    message for a missing, unreadable or invalid model."""
    import pyquant
    if spec is None or spec == "builtin" or spec.startswith("builtin:"):
        name = None if spec in (None, "builtin") else spec.split(":", 1)[1]
        try:
            return pyquant.builtin_generator(name)
        except ValueError as e:
            raise CliError(str(e), _EXIT_USAGE) from None
    path = Path(spec)
    if not path.exists():
        raise CliError(f"model file not found: {spec} (MODEL is builtin[:NAME], a .pyquant, .keras or .pt file)")
    if path.is_dir():
        raise CliError(f"{spec}: is a folder, not a model file")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _load_keras(path)
    if suffix in (".pt", ".pth"):
        return _load_torch(path, arch)
    try:
        return pyquant.load(path)
    except ValueError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot read {spec}: {e.strerror or e}") from None


def _load_keras(path: Path):
    import pyquant
    try:
        import keras
    except ImportError as e:
        raise CliError(f"{path}: loading a .keras model needs keras and a backend for it (pip install keras; "
                       f"KERAS_BACKEND=torch uses torch) ({_one_line(e)})") from None
    try:
        net = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:  # keras raises many types for a bad file
        raise CliError(f"{path}: not a loadable Keras model ({type(e).__name__}: {_one_line(e)})") from None
    try:
        return pyquant.from_keras(net, name=path.stem)
    except ValueError as e:
        raise CliError(f"{path}: {e}") from None


def _load_torch(path: Path, arch: Optional[str]):
    import pyquant
    if not arch:
        raise CliError(f"{path}: a PyTorch state_dict needs --arch module:function (a function that builds the "
                       f"module it belongs to)", _EXIT_USAGE)
    module_name, _, fn_name = arch.partition(":")
    if not module_name or not fn_name:
        raise CliError(f"--arch must be module:function, got {arch!r}", _EXIT_USAGE)
    added = os.getcwd() not in sys.path
    if added:  # modules in the current folder, as `python -m` would find them
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise CliError(f"--arch {arch}: cannot import it ({_one_line(e)})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    try:
        import torch
    except ImportError:
        raise CliError(f"{path}: loading a .pt state_dict needs torch (pip install torch)") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise CliError(f"{path}: not a loadable PyTorch state_dict ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(state, dict):
        raise CliError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    net = fn()
    try:
        net.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CliError(f"{path}: does not fit --arch {arch} ({_one_line(e)})") from None
    net.eval()
    try:
        return pyquant.from_torch(net, name=path.stem)
    except ValueError as e:
        raise CliError(f"{path}: {e}") from None


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- commands --
def _cmd_info(args) -> int:
    import pyquant
    model = load_model(args.model, args.arch) if args.model else None
    if args.json:
        out = pyquant.config()
        if model is not None:
            out["model"] = {"name": model.name, "latent_shape": list(model.latent_shape),
                            "output_shape": list(model.output_shape), "layout": model.layout,
                            "parameters": model.n_params, "bytes": model.nbytes,
                            "float32_bytes": model.float32_nbytes,
                            "layers": [{"name": l.name, "kind": l.kind, "precision": l.precision,
                                        "sparsity": l.sparsity, "bytes": l.nbytes} for l in model.layers]}
        print(json.dumps(out, indent=2))
        return 0
    pyquant.show_config()
    if model is not None:
        print()
        print(model.summary())
    return 0


def _cmd_report(args) -> int:
    from .report import format_table, make_report, require_report_dependencies, summary_rows
    require_report_dependencies()
    model = load_model(args.model, args.arch)
    source = args.model or "builtin"
    if source == "builtin":
        source = f"builtin:{model.name}"
    t0 = time.perf_counter()
    report = make_report(model, args.out, source=source, sparsities=args.sparsity, calibrate=args.calibrate,
                         optimize=args.optimize,
                         batch=args.batch, samples=args.samples, seed=args.seed, threads=args.threads,
                         torch_ref=False if args.no_torch else None,
                         progress=False if args.no_progress else None)
    wall = time.perf_counter() - t0
    env = report["environment"]
    head, rows = summary_rows(report)
    print(f"pyquant report: {report['model']['source']} on {env['cpu']} ({env['isa']}, {env['threads']} threads)")
    print(format_table(head, rows))
    out = Path(report["files"]["folder"])
    n_png = len(report["files"]["images"])
    print(f"wrote {out / 'report.md'}, report.json and {n_png} PNGs in {out}/ ({wall:.1f} s)")
    return 0


def _cmd_compress(args) -> int:
    import pyquant
    model = load_model(args.model, args.arch)
    skip = [s for s in (args.skip or "").split(",") if s.strip()]
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"-o {out}: is a folder; give a file name such as model.pyquant", _EXIT_USAGE)
    f32_bytes = model.float32_nbytes
    if args.target_psnr is not None:
        try:
            model, table = pyquant.compress(model, args.calibrate or 256, target_psnr=args.target_psnr,
                                            objective=args.objective)
        except ValueError as e:
            raise CliError(str(e), _EXIT_USAGE) from None
        for row in table:
            print(f"  {row['name']}: {row['option']} ({row['precision']}), {row['bytes']:,} bytes, "
                  f"{row['psnr_alone']:.1f} dB alone")
        print(f"held-out PSNR {table.summary['psnr']:.2f} dB (target {args.target_psnr:g}); plain int8 would take "
              f"{table.summary['int8_bytes']:,} bytes")
        s = table.summary
        if s.get("objective") == "speed":
            print(f"batch-{s['time_batch']} forward {s['time_ms']:.2f} ms; plain int8 with static activations "
                  f"{s['int8_static_time_ms']:.2f} ms ({s['speedup_vs_int8_static']:.2f}x"
                  f"{'; the same kernels' if s['same_kernels_as_int8_static'] else ''}), dynamic "
                  f"{s['int8_time_ms']:.2f} ms, float32 {s['float32_time_ms']:.2f} ms")
            slow = {k: v for k, v in s.get("options_not_faster", {}).items() if v}
            if slow:
                print("  not faster than int8, so not considered: "
                      + "; ".join(f"{k}: {', '.join(v)}" for k, v in slow.items()))
        args.sparsity, args.dtype = 0.0, "float32"  # the choices are made
    try:
        if args.sparsity:
            model = pyquant.prune_model(model, args.sparsity, skip=skip, scope=args.scope)
        if args.dtype == "int8":
            calib = model.latents(args.calibrate, seed=1) if args.calibrate else None
            model = pyquant.quantize_model(model, "int8", calibration=calib, skip=skip)
    except ValueError as e:
        raise CliError(str(e), _EXIT_USAGE) from None
    try:
        model.save(out)
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror or e}") from None
    print(model.summary())
    disk = os.path.getsize(out)
    print(f"wrote {out}: {disk:,} bytes; arrays {model.nbytes:,} bytes, {f32_bytes / model.nbytes:.2f}x smaller "
          f"than float32 ({f32_bytes:,} bytes)")
    return 0


def _cmd_generate(args) -> int:
    import numpy as np

    import pyquant
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise CliError(f"-o {out}: the file name must end in .png (an image grid) or .npy (the float32 array)",
                       _EXIT_USAGE)
    if suffix == ".png":
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise CliError("writing a PNG needs pillow: pip install 'pyquant[report]' (or write .npy)") from None
    model = load_model(args.model, args.arch)
    if args.dtype == "int8":
        calib = model.latents(args.calibrate, seed=args.seed + 1) if args.calibrate else None
        model = pyquant.quantize_model(model, "int8", calibration=calib)
    images = model.generate(args.n, seed=args.seed)
    try:
        if suffix == ".npy":
            np.save(out, images)
        else:
            from .report import image_grid
            image_grid(images, model.layout, cols=args.cols).save(out)
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {out}: {args.n} images {tuple(images.shape[1:])} ({model.layout}) from seed {args.seed}, "
          f"model {model.name!r} ({args.dtype})")
    return 0


# ------------------------------------------------------------------------------------------------ parser --
def build_parser() -> argparse.ArgumentParser:
    model_help = ("builtin[:NAME] (default builtin: the trained digits generator that ships with pyquant), a "
                  ".pyquant model file, a Keras .keras file, or a PyTorch state_dict .pt with --arch")
    arch_help = "module:function that builds the PyTorch module of a .pt state_dict"
    p = _Parser(prog="pyquant", description="pyquant: run quantized and pruned image generators fast on CPUs. "
                                            "Start with `pyquant report`.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="versions, CPU features, ISA paths and threads; a model's summary",
                          description="Print versions, CPU features, the ISA paths compiled / available / in use "
                                      "and the thread count; with MODEL, also the model's layer summary.")
    info.add_argument("model", nargs="?", metavar="MODEL", help=model_help.replace(" (default builtin: the trained "
                      "digits generator that ships with pyquant)", ""))
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--arch", help=arch_help)

    rep = sub.add_parser("report", help="compress a generator every way and compare size, speed and fidelity",
                         description="Compare the float32 model with int8 (dynamic and static) and pruned (float32 "
                                     "and int8) variants on the same latents: size, speed (batch 1 and --batch), "
                                     "fidelity (PSNR, SSIM, max error; for the built-in model, agreement of a "
                                     "digit classifier and a Frechet distance to the real digits), per-layer "
                                     "times. Writes report.md, report.json, image grids, a side-by-side and "
                                     "plots into --out (a folder holding an earlier report is replaced whole; any "
                                     "other non-empty folder is refused).")
    rep.add_argument("model", nargs="?", metavar="MODEL", help=model_help)
    rep.add_argument("--out", default="pyquant-report", metavar="DIR",
                     help="report folder (default: %(default)s)")
    rep.add_argument("--sparsity", type=_sparsity_list, default=[0.5, 0.75, 0.9], metavar="S,S,...",
                     help="sparsities of the pruned variants (default: 0.5,0.75,0.9; 'none' for none)")
    rep.add_argument("--calibrate", type=_positive_int, default=256, metavar="N",
                     help="latents the int8 static variant is calibrated on (default: %(default)s)")
    rep.add_argument("--batch", type=_positive_int, default=64, metavar="B",
                     help="batch size timed besides 1, and used to make the images (default: %(default)s)")
    rep.add_argument("--samples", type=_positive_int, default=256, metavar="N",
                     help="images per variant for the fidelity measures (default: %(default)s)")
    rep.add_argument("--seed", type=_count, default=0, help="seed of the latents (default: %(default)s)")
    rep.add_argument("--threads", type=_positive_int, metavar="T",
                     help="threads for pyquant's kernels, torch and numpy's BLAS (default: pyquant's, all cores)")
    rep.add_argument("--arch", help=arch_help)
    rep.add_argument("--no-torch", action="store_true", help="skip the torch float32 reference row")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument("--no-optimize", dest="optimize", action="store_false",
                     help="skip the optimized variants (int4 GPTQ, pruning with reconstruction) and the per-layer "
                          "sensitivity analysis")

    comp = sub.add_parser("compress", help="write a compressed model file",
                          description="Prune (--sparsity) and/or quantize (--dtype int8) a model and write it as "
                                      "a pyquant model file; prints its summary and size ratio.")
    comp.add_argument("model", metavar="MODEL", help=model_help.replace(" (default builtin: the trained digits "
                      "generator that ships with pyquant)", ""))
    comp.add_argument("-o", "--output", required=True, metavar="OUT", help="model file to write (e.g. m.pyquant)")
    comp.add_argument("--dtype", choices=("int8", "float32"), default="int8",
                      help="weights: int8 (default) or float32 (with --sparsity: sparse float32)")
    comp.add_argument("--sparsity", type=_sparsity, default=0.0, metavar="S",
                      help="fraction of weights to prune, smallest magnitudes first (default 0)")
    comp.add_argument("--scope", choices=("layer", "global"), default="layer",
                      help="prune each layer to the sparsity (layer, default, as the report does) or all layers "
                           "with one magnitude threshold (global)")
    comp.add_argument("--calibrate", type=_count, default=0, metavar="N",
                      help="int8: static activation ranges from N latents (default 0: dynamic, per call)")
    comp.add_argument("--skip", metavar="LAYER,...", help="layers (by name) that keep their precision")
    comp.add_argument("--target-psnr", type=float, default=None, metavar="DB",
                      help="pick each layer's precision and sparsity (int8, int4, pruning with reconstruction) so "
                           "the model keeps this PSNR vs float32 on held-out latents (replaces --dtype/--sparsity)")
    comp.add_argument("--objective", choices=("size", "speed"), default="size",
                      help="with --target-psnr: the smallest (default) or the fastest model meeting it")
    comp.add_argument("--arch", help=arch_help)

    gen = sub.add_parser("generate", help="images as a grid PNG or a .npy array",
                         description="Generate images from standard-normal latents (seed --seed) and write them "
                                     "as a grid PNG or, with a .npy file name, as the float32 array.")
    gen.add_argument("model", metavar="MODEL", help=model_help.replace(" (default builtin: the trained digits "
                     "generator that ships with pyquant)", ""))
    gen.add_argument("-n", type=_positive_int, default=64, help="number of images (default: %(default)s)")
    gen.add_argument("--seed", type=_count, default=0, help="seed of the latents (default: %(default)s)")
    gen.add_argument("-o", "--output", required=True, metavar="FILE", help="grid.png or images.npy")
    gen.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                     help="run the model as it is (float32, default) or quantized to int8")
    gen.add_argument("--calibrate", type=_count, default=0, metavar="N",
                     help="int8: static activation ranges from N latents (default 0: dynamic)")
    gen.add_argument("--cols", type=_positive_int, help="images per grid row (default: a square)")
    gen.add_argument("--arch", help=arch_help)
    return p


_COMMANDS = {"info": _cmd_info, "report": _cmd_report, "compress": _cmd_compress, "generate": _cmd_generate}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _COMMANDS[args.command](args)
    except CliError as e:
        _fail(str(e))
        return e.status
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except ImportError as e:
        _fail(_one_line(e))
        return _EXIT_FAILURE
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        _fail(f"{e.strerror or _one_line(e)}:{where}" if e.strerror else _one_line(e))
        return _EXIT_FAILURE
    except (ValueError, TypeError, KeyError) as e:
        _fail(_one_line(e))
        return _EXIT_FAILURE
    except Exception as e:  # an unexpected failure: still one line; PYQUANT_DEBUG=1 shows the traceback
        if os.environ.get("PYQUANT_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {_one_line(e)} (PYQUANT_DEBUG=1 shows the traceback)")
        return _EXIT_FAILURE


def _fail(message: str) -> None:
    sys.stderr.write(f"pyquant: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
