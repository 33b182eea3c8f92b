"""Figures for files, without pyplot and without a layout solver.

pyplot brings a backend registry, a figure manager and an interactive state
this package never uses; a bare :class:`~matplotlib.figure.Figure` saves to
PNG through the Agg canvas on its own.  Charts here place their axes at fixed
margins given in inches (:func:`place`), so no ``tight_layout`` pass has to
measure every text first (1-2 s on a large chart).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ...chart_geometry import DPI


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches, for :func:`save`."""
    return Figure(figsize=(width, height), dpi=DPI)


def place(fig: Figure, *, left: float, right: float, top: float, bottom: float, hspace: float = 0.0,
          wspace: float = 0.0) -> None:
    """Margins in inches (not fractions), so text keeps its room whatever the figure size."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        hspace=hspace, wspace=wspace)


# PNG text chunks left out: without matplotlib's version in "Software", the same chart is the
# same bytes on any matplotlib that draws it alike.
PNG_METADATA = {"Software": None}


def save(fig: Figure, path) -> None:
    # zlib level 1: a third less encoding time than the default 6 for files ~10% larger.
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1}, metadata=PNG_METADATA)
