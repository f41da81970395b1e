"""What a check returns (a ``GradcheckReport`` of ``GradcheckRow``s, printing as a table) and
the error it raises."""
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


class GradcheckError(AssertionError):
    """A backward disagrees with central differences of its forward."""


class GradcheckPrecisionWarning(UserWarning):
    """Float32 inputs were checked on float64 copies (central differences need float64)."""


@dataclass
class GradcheckRow:
    """One checked input (or parameter, or op in an audit)."""
    name: str
    shape: Any
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    passed: bool = True
    method: str = "projection"   # 'projection' (screen), 'jacobian', 'vJ' or 'bisection'
    worst_index: Any = None      # (output index, input index) for 'jacobian', else input index
    numerical: Optional[float] = None
    analytic: Optional[float] = None
    note: str = ""               # non-differentiable point, error, ...
    extra: dict = field(default_factory=dict)

    @property
    def status(self):
        if self.passed:
            return "ok"
        if "non-differentiable" in self.note:
            return "non-diff"
        return "ERROR" if self.note.startswith("error") else "FAIL"

    def describe(self, atol=None, rtol=None, check="gradcheck"):
        """A few lines saying what went wrong (empty when the row passed)."""
        if self.passed:
            return ""
        lines = [f"{check} failed for {self.name} (shape {self.shape}):"]
        if self.numerical is not None and self.method == "vjp vs backward":
            lines.append(f"  worst element [{self.worst_index[0]}] of the first derivatives joined "
                         f"flat: backward {self.numerical:.8g}, vjp (create_graph) {self.analytic:.8g}")
        elif self.numerical is not None and self.method == "derivative":
            lines.append(f"  worst element in{list(self.worst_index)}: the analytic derivative is "
                         f"{self.numerical:.8g}, backward gives {self.analytic:.8g}")
        elif self.numerical is not None:
            where = _format_worst(self.method, self.worst_index)
            lines.append(f"  worst element {where}: numerical {self.numerical:.8g}, "
                         f"analytic {self.analytic:.8g}")
        if self.numerical is not None:
            tolerance = f" (atol {atol:g}, rtol {rtol:g})" if atol is not None else ""
            lines.append(f"  max abs error {self.max_abs_err:.3g}, max rel error "
                         f"{self.max_rel_err:.3g}{tolerance}")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def _format_worst(method, index):
    if method == "jacobian":
        return f"d out{list(index[0])} / d in{list(index[1])}"
    if method in ("vJ", "bisection"):
        return f"in{list(index)} of vᵀJ (v: a random output weighting)"
    return "(a random projection vᵀJu)"


_INPUT_COLUMNS = (("input", "name"), ("shape", "shape"), ("max abs err", "max_abs_err"),
                  ("max rel err", "max_rel_err"), ("check", "method"), ("passed", "status"))


class GradcheckReport:
    """Rows of a check, printing as a table; ``passed`` is True when every row passed."""

    def __init__(self, rows, columns=_INPUT_COLUMNS, title="gradcheck", atol=None, rtol=None,
                 footer="", check="gradcheck"):
        self.rows, self.columns, self.title, self.footer = list(rows), tuple(columns), title, footer
        self.atol, self.rtol = atol, rtol
        self.check = check  # the check's name, as failure messages give it

    passed = property(lambda self: all(row.passed for row in self.rows))
    failures = property(lambda self: [row for row in self.rows if not row.passed])

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    @property
    def headers(self):
        return [header for header, _ in self.columns]

    def table(self):
        cells = [[_cell(getattr(row, attr) if isinstance(attr, str) else attr(row))
                  for _, attr in self.columns] for row in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self.headers)]
        line = lambda parts: "  ".join(p.ljust(w) for p, w in zip(parts, widths)).rstrip()
        out = [line(self.headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
        return "\n".join(out + ([self.footer] if self.footer else []))

    def message(self):
        """The failure text: what went wrong per failing row, then the table."""
        details = [row.describe(self.atol, self.rtol, self.check) for row in self.failures]
        return "\n".join(details + ["", self.table()])

    def __str__(self):
        return self.table()

    __repr__ = __str__


def _cell(value):
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2e}" if np.isfinite(value) else str(value)
    if isinstance(value, tuple):
        return str(value)
    return "" if value is None else str(value)

