"""Look at the graph behind a tensor: Graphviz DOT text or an indented tree.

Each op (a ``Function``) shows the shape of the tensor that carries its output.

>>> import nanodl as nd
>>> x = nd.tensor([[1.0, 2.0]], requires_grad=True)
>>> x.name = "x"
>>> nd.viz.print_graph((x * 3).sum())
Sum ()
  Mul (1, 2)
    x (1, 2) requires_grad
    const ()
"""


def _label(tensor):
    if tensor.grad_fn is not None:
        return tensor.grad_fn.name
    return tensor.name or ("param" if tensor.requires_grad else "const")


def _walk(root):
    """Tensors reachable from ``root``, each op or leaf once (iterative)."""
    seen, order, stack = set(), [], [root]
    while stack:
        tensor = stack.pop()
        key = _identity(tensor)
        if key in seen:
            continue
        seen.add(key)
        order.append(tensor)
        if tensor.grad_fn is not None:
            stack.extend(reversed(tensor.grad_fn.inputs))
    return order


def _identity(tensor):
    return id(tensor.grad_fn) if tensor.grad_fn is not None else id(tensor)


def _quote(text):
    return '"' + str(text).replace('"', '\\"') + '"'


def to_dot(tensor, graph_name="nanodl"):
    """Graphviz DOT text for the graph that made ``tensor`` (docs/internals.md shows one)."""
    lines = [f"digraph {graph_name} {{", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    edges = []
    order = _walk(tensor)
    keys = {}  # op0, op1, ..., t0, t1, ...: stable, readable ids
    for prefix, is_op in (("op", True), ("t", False)):
        nodes = [t for t in order if (t.grad_fn is not None) == is_op]
        keys.update({_identity(t): f"{prefix}{i}" for i, t in enumerate(nodes)})
    for node_tensor in order:
        key, shape = keys[_identity(node_tensor)], tuple(node_tensor.shape)
        if node_tensor.grad_fn is not None:
            style = '"filled,bold"' if node_tensor is tensor else "filled"
            label = f"{node_tensor.grad_fn.name}\\n{shape}"
            lines.append(f'  {key} [label={_quote(label)}, shape=box, style={style}, fillcolor="#dbe9f6"];')
            edges += [f"  {keys[_identity(t)]} -> {key};" for t in node_tensor.grad_fn.inputs]
        else:
            grad_note = "requires_grad" if node_tensor.requires_grad else "no grad"
            label = f"{_label(node_tensor)}\\n{shape}\\n{grad_note}"
            fill = "#fde9c9" if node_tensor.requires_grad else "#eeeeee"
            lines.append(f'  {key} [label={_quote(label)}, shape=ellipse, style=filled, fillcolor="{fill}"];')
    return "\n".join(lines + edges + ["}"])


def graph_text(tensor):
    """The indented tree ``print_graph`` prints, as a string."""
    lines, shown, stack = [], set(), [(tensor, 0)]
    while stack:
        node_tensor, depth = stack.pop()
        indent = "  " * depth
        shape = tuple(node_tensor.shape)
        if node_tensor.grad_fn is None:
            note = " requires_grad" if node_tensor.requires_grad else ""
            lines.append(f"{indent}{_label(node_tensor)} {shape}{note}")
            continue
        key = id(node_tensor.grad_fn)
        if key in shown:
            lines.append(f"{indent}{node_tensor.grad_fn.name} {shape} (shown above)")
            continue
        shown.add(key)
        lines.append(f"{indent}{node_tensor.grad_fn.name} {shape}")
        stack.extend((child, depth + 1) for child in reversed(node_tensor.grad_fn.inputs))
    return "\n".join(lines)


def print_graph(tensor, file=None):
    """Print the graph behind ``tensor`` as an indented tree, root first."""
    print(graph_text(tensor), file=file)
