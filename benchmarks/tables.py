"""The benchmarks' one table printer: Markdown for RESULTS.md, aligned columns otherwise."""


def format_table(header, rows, markdown=False, justify="left", rule=False):
    """``header`` and every row are sequences of strings; ``rule`` puts dashes under the
    header of the plain table.

    >>> print(format_table(("a", "bb"), [("1", "2")], markdown=True))
    | a | bb |
    |---|---|
    | 1 | 2 |
    """
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    pad = str.ljust if justify == "left" else str.rjust
    lines = ["  ".join(pad(cell, width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
