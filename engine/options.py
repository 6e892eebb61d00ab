"""Every reconstruction option, defined once: type, default, range, help text and command-line flag.

:class:`Options` is the table.  The wire protocol's check, the CLI's flags,
the Python API's validation and the Blender properties all derive from it,
so adding an option is one field here (plus the code that uses it).
Validation happens here, before any work and before torch loads, and every
refusal names the option, its range and the fix.

Standard library only: the protocol and the Blender extension import it
without torch or numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import InputError

_CUDA = re.compile(r"cuda(:\d+)?")
_SCHEMES = ("tcp", "tls", "ucx", "inproc")  # Dask scheduler addresses
PRIORS = ("learned", "none")  # the kernel priors (option ``prior``)
EXECUTORS = "'inprocess', 'processes', 'dask' or a Dask scheduler address such as 'tcp://host:8786'"


class OptionError(InputError):
    """An option that is unknown, of the wrong type or out of its range."""

    code = "bad_option"


@dataclass(frozen=True)
class Spec:
    """How one option is checked and shown: ``kind`` and range, values also accepted, help and CLI flag.

    ``minimum``/``maximum`` bound numbers (the minimum excluded when ``open_minimum``);
    ``special`` values (``"auto"``, ``None``) are accepted besides the kind's own;
    ``flag`` is the CLI's (a bool whose default is True gets a ``--no-...`` flag that turns it off);
    ``internal`` options are the protocol's own (never on the CLI or in Blender);
    strings may name their forms: ``valid`` accepts a value, ``forms`` says which in words.
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    special: tuple[Any, ...] = ()
    flag: str | None = None
    metavar: str | None = None
    internal: bool = False
    valid: Callable[[Any], bool] | None = None
    forms: str | None = None

    def range_text(self) -> str:
        """The accepted values in words, for messages and help: e.g. 'an integer from 0 to 3'."""
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.kind]
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            kind += (f" above {_num(lo)} and at most {_num(hi)}" if self.open_minimum
                     else f" from {_num(lo)} to {_num(hi)}")
        elif lo is not None:
            kind += f" {'above' if self.open_minimum else 'of at least'} {_num(lo)}"
        elif hi is not None:
            kind += f" of at most {_num(hi)}"
        if self.forms is not None:
            kind = self.forms
        extra = [("unset" if s is None else repr(s)) for s in self.special]
        return " or ".join([kind, *extra])

    def check(self, value: Any) -> Any:
        """``value`` if this option accepts it (ints where floats are asked become floats), else OptionError."""
        if any(value is s or (isinstance(s, str) and value == s) for s in self.special):
            return value
        # bool is an int to Python, never a number to a user; ints are fine where floats are.
        numeric = self.kind in (int, float)
        ok = isinstance(value, bool) if self.kind is bool else (
            not isinstance(value, bool) and isinstance(value, (int, float) if self.kind is float else self.kind))
        if not ok:
            raise self._refuse(value)
        if self.kind is float:
            value = float(value)
            if not math.isfinite(value):
                raise self._refuse(value)
        if numeric and not self._in_range(value):
            raise self._refuse(value)
        if self.valid is not None and not self.valid(value):
            raise self._refuse(value)
        return value

    def _in_range(self, value: float) -> bool:
        lo, hi = self.minimum, self.maximum
        return not ((lo is not None and (value < lo or (self.open_minimum and value == lo)))
                    or (hi is not None and value > hi))

    def _refuse(self, value: Any) -> OptionError:
        shown = repr(value) if isinstance(value, str | int | float | None) else type(value).__name__
        return OptionError(f"Option {self.name!r} must be {self.range_text()}; got {shown[:100]}.",
                           f"{self.help[0].upper()}{self.help[1:]}; default {self.default_text()}.")

    def default_text(self) -> str:
        return "unset" if self.default is None else f"{self.default!r}" if isinstance(self.default, str) else (
            f"{self.default:g}" if isinstance(self.default, float) else str(self.default))


def _num(value: float) -> str:
    """A bound as people write it: 0.1, 3, 1000000."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _device_name(name: str) -> bool:
    return name in ("auto", "cpu") or _CUDA.fullmatch(name) is not None


def _prior_name(name: str) -> bool:
    return name in PRIORS


def _known_executor(name: str) -> bool:
    name = name.strip()
    return name in ("", "inprocess", "processes", "dask") or name.startswith("dask://") or (
        "://" in name and name.split("://")[0] in _SCHEMES)


def option(default: Any, help: str, *, flag: str | None = None, **spec: Any) -> Any:
    """A field of :class:`Options` carrying its :class:`Spec` (name and kind are filled in from the field)."""
    return dataclasses.field(default=default, metadata={"spec": dict(help=help, flag=flag, **spec)})


@dataclass(frozen=True)
class Options:
    """The options of one reconstruction, with their defaults; build with :meth:`of` to validate them."""

    detail_level: float | str = option(
        "auto", "'auto' measures spacing and noise; 0 is smooth and coarse, 1 as fine as the points allow",
        flag="--detail", kind=float, minimum=0.0, maximum=1.0, special=("auto",))
    voxel_size: float | None = option(
        None, "finest voxel size in input units (overrides the detail level)",
        flag="--voxel-size", kind=float, minimum=0.0, open_minimum=True, special=(None,))
    mise_iter: int | str = option(
        "auto", "refinement rounds below the finest voxel; each halves the triangle size and quadruples the count "
        "('auto': the voxel's mesh with its edges halved where the surface bends, or a uniform round in chunks, "
        "watertight meshes, clouds with noise of at least 0.35 voxel and surfaces rough, folding or creased at the "
        "voxel's scale (creased: 2 where the mesh stays small); 0 for a scan with sensor positions and noise of at "
        "least 0.1 voxel, whose noise the finer cells only follow)",
        flag="--mise-iter", kind=int, minimum=0, maximum=3, special=("auto",))
    max_faces: int | None = option(
        None, "triangles the mesh may have at most (unset: as many as a tolerance of 0.035 voxel needs)",
        flag="--max-faces", kind=int, minimum=4, maximum=1_000_000_000, special=(None,))
    trim: bool = option(True, "cut away surface far from the points (off closes holes)", flag="--no-trim", kind=bool)
    keep_fragments: bool = option(
        False, "keep small pieces of surface that few points support (stray points' blobs, removed by default)",
        flag="--keep-fragments", kind=bool)
    watertight: bool = option(
        False, "close holes into one closed manifold surface, for 3D printing and simulation (replaces trim)",
        flag="--watertight", kind=bool)
    register_views: bool = option(
        True, "move each scanner view (the points that share a sensor position) rigidly onto the others before "
        "fitting, undoing small misregistration", flag="--no-register-views", kind=bool)
    prior: str = option(
        "none", "kernel prior: 'learned' weighs the fit's smoothness per region by a small network trained on "
        "simulated scans (engine/prior/prior.pt); 'none' uses one global smoothness weight",
        flag="--prior", kind=str, valid=_prior_name, forms="'learned' or 'none'")
    # Why 3e-3 (1e-3 until 2026-12-05, 1e-5 before 2026-12-02): the finest level's last digits never reached the
    # mesh.  1e-5 against 1e-3, on the 100k bench inputs (bunny, torus, sphere; clean, 0.5% noise, and the scans with
    # and without normals): Chamfer within 0.3% on all 12, finest-level iterations 117-131 -> 57-58 on the scans
    # with normals.  1e-3 against 3e-3 (with the Gauss-Seidel preconditioner; bunny, torus, sphere at 100k: clean,
    # 0.25%, 0.5% and 1% noise, tilted normals, the scans with and without normals): Chamfer-L1 within 0.3% on all
    # 21 (the 1M clean bunny 0.0091 either way); finest-level iterations torus scan 21 -> 16, 1M clean 7 -> 5; the
    # solve stage 0.47 -> 0.33 s and 1.88 -> 1.54 s.  1e-2 saved more (8 and 4 iterations) and kept 20 of them
    # within 0.8%, but the bunny with 1% noise lost 1.4% (1.0878 -> 1.1032e-3: its smooth, heavily regularised
    # field is still moving there), past bench/RESULTS.md's 1.093.
    solver_tol: float = option(
        3e-3, "relative residual at which the solver stops", flag="--solver-tol", kind=float, minimum=0.0,
        maximum=0.1, open_minimum=True)
    solver_max_iter: int = option(
        2000, "solver iterations per level at most", flag="--solver-max-iter", kind=int, minimum=1, maximum=1_000_000)
    device: str = option("auto", "where the engine computes: CUDA when available, else the CPU", flag="--device",
                         kind=str, valid=_device_name, forms="'auto', 'cpu', 'cuda' or 'cuda:N'")
    # Why 3 levels: measured on the bunny (100k points, clean and 0.5% noise): 2, 3
    # and 4 give the same Chamfer and normal consistency (0.0445e-3 / 0.370e-3), while the 4th costs 20% more
    # time.  Three keep a coarsest voxel of 4h, which still bridges gaps of several voxels.
    depth: int = option(3, "levels of the voxel hierarchy (each doubles the voxel size)", flag="--depth", kind=int,
                        minimum=1, maximum=6)
    memory_limit_gb: float | None = option(
        None, "memory the run may use, in GB (unset: 3/4 of the free memory of the device)",
        flag="--memory-limit", metavar="GB", kind=float, minimum=0.0, open_minimum=True, special=(None,))
    estimate_normals: bool = option(
        False, "estimate normals even when the cloud has them (they are estimated when it has none)",
        flag="--estimate-normals", kind=bool)
    keep_normals: bool = option(
        False, "use the cloud's normals as they are, even where they lie far off the planes of their points (by "
        "default normals a median of over 6 degrees off are estimated again, turned the way the given ones face)",
        flag="--keep-normals", kind=bool)
    normal_k: int | None = option(
        None, "neighbours per estimated normal (unset: measured)", flag="--normal-k", kind=int, minimum=5,
        maximum=256, special=(None,))
    chunk_size: float | None = option(
        None, "solve in overlapping cubes of this edge, input units (unset: only when over the memory limit)",
        flag="--chunk-size", kind=float, minimum=0.0, open_minimum=True, special=(None,))
    overlap_ratio: float = option(
        0.1, "data each chunk sees around it, as a share of its size", flag="--overlap-ratio", kind=float,
        minimum=0.0, maximum=0.5)
    auto_chunk: bool = option(
        True, "chunk when the scene would not fit the memory limit (off: fail instead)", flag="--no-auto-chunk",
        kind=bool)
    executor: str = option(
        "inprocess", "where chunks run: inprocess, processes, dask, or a Dask scheduler address",
        flag="--executor", kind=str, valid=_known_executor, forms=EXECUTORS)
    workers: int | None = option(
        None, "processes (or Dask threads) solving chunks at once (unset: up to 4)", flag="--workers", kind=int,
        minimum=1, maximum=1024, special=(None,))

    @classmethod
    def of(cls, options: Options | Mapping[str, Any] | None = None, **overrides: Any) -> Options:
        """Validated options: ``options`` (a mapping or an Options) updated by ``overrides``; OptionError if bad."""
        given = dict(dataclasses.asdict(options) if isinstance(options, Options) else (options or {}))
        given.update(overrides)
        opts = cls(**check(given, SPECS))
        if opts.estimate_normals and opts.keep_normals:
            raise OptionError("Options 'estimate_normals' and 'keep_normals' cannot both be on (one replaces the "
                              "given normals, the other keeps them).", "Turn one of them off.")
        if opts.watertight and opts.chunk_size is not None:  # chunks are meshed apart: no one closed piece
            raise OptionError("Option 'watertight' cannot be combined with 'chunk_size' (chunks are meshed apart).",
                              "Leave chunk_size unset, or turn watertight off.")
        return opts

    def replace(self, **changes: Any) -> Options:
        return Options.of(self, **changes)


def _specs() -> dict[str, Spec]:
    return {f.name: Spec(name=f.name, default=f.default, **f.metadata["spec"]) for f in fields(Options)}


SPECS: dict[str, Spec] = _specs()
# Options of a protocol request that are the transport's, not the reconstruction's.
# ``_benchmark_echo_faces`` is a benchmark hook (bench/transport.py): the engine skips the solve and answers
# with a synthetic mesh of that many faces, to time the transport alone (bounded: it allocates them).
# ``_test_hold_seconds`` is the service tests' hook: the job first stands that long in the solve stage, reporting
# progress and heeding cancel as the solver does, so that cancel, kill and stall tests meet a busy engine whatever
# the machine's speed (a real solve of a test cloud ends in under a second; its length is no contract).
REQUEST_SPECS: dict[str, Spec] = {
    **SPECS,
    "mesh_edges": Spec("mesh_edges", bool, False, "send the mesh's edges too (Blender builds it faster)",
                       internal=True),
    "_benchmark_echo_faces": Spec("_benchmark_echo_faces", int, None, "faces of a synthetic mesh to send back",
                                  minimum=0, maximum=50_000_000, internal=True),
    "_test_hold_seconds": Spec("_test_hold_seconds", float, None, "seconds the job stands in the solve stage first",
                               minimum=0, maximum=3600, internal=True),
}


def check(given: Mapping[str, Any], specs: Mapping[str, Spec] = REQUEST_SPECS) -> dict[str, Any]:
    """``given`` checked against ``specs``: a plain dict, or OptionError naming the first bad option."""
    out = {}
    for name, value in given.items():
        spec = specs.get(name)
        if spec is None:
            public = sorted(n for n, s in specs.items() if not s.internal)
            raise OptionError(f"Unknown option {name!r}.", f"Accepted options: {', '.join(public)}.")
        out[name] = spec.check(value)
    return out


# -- command line -----------------------------------------------------------------------------------------------------

def _cli_value(spec: Spec) -> Any:
    """argparse ``type`` for a flag: the kind, with 'auto' where the option accepts it."""
    def parse(text: str) -> Any:
        if text in [s for s in spec.special if isinstance(s, str)]:
            return text
        try:
            return spec.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.range_text()}, got {text!r}") from None
    parse.__name__ = spec.kind.__name__  # argparse names the type in its messages
    return parse


def _flagged(names: Iterable[str] | None) -> list[Spec]:
    return [SPECS[n] for n in (SPECS if names is None else names) if SPECS[n].flag is not None]


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """One flag per option (all, or ``names``), its help with the default; values land under the option's name."""
    for spec in _flagged(names):
        flag = str(spec.flag)
        if spec.kind is bool:  # --no-x for options on by default, --x for those off
            parser.add_argument(flag, dest=spec.name, action="store_false" if spec.default else "store_true",
                                help=f"turn off: {spec.help}" if spec.default else spec.help)
        else:
            shown = "" if spec.default is None else f" (default {spec.default_text()})"
            parser.add_argument(flag, dest=spec.name, type=_cli_value(spec), default=spec.default,
                                metavar=spec.metavar or flag.lstrip("-").upper().replace("-", "_"),
                                help=spec.help + shown)


def from_flags(args: argparse.Namespace, names: Iterable[str] | None = None) -> Options:
    """The validated options of flags parsed by :func:`add_flags` (OptionError names a value out of range)."""
    return Options.of({spec.name: getattr(args, spec.name) for spec in _flagged(names)})
