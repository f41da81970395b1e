"""``einsum``: NumPy's Einstein summation, differentiable to any order.

An operand's gradient is again one einsum (the output's gradient and the other operands,
onto that operand's letters), with an identity for a repeated letter (``'ii->i'``) and
ones for a letter only it has (``'ij->i'``): so any order.

>>> import nanodl as nd
>>> a = nd.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> nd.einsum('ii', a).backward()          # the trace
>>> a.grad.tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""
import string

from ..autograd import Function
from ..backend import array_module
from ..tensor import Tensor

LETTERS = string.ascii_uppercase + string.ascii_lowercase   # NumPy's order for the implicit output


def _error(message, subscripts, shapes):
    shown = ", ".join(str(tuple(shape)) for shape in shapes)
    return ValueError(f"einsum: {message} (subscripts {subscripts!r}, operand shapes {shown})")


def explicit(subscripts, shapes):
    """``subscripts`` for operands of ``shapes`` as one explicit spec of letters only:
    (a list of each operand's letters, the output's letters)."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: subscripts must be a string, got {type(subscripts).__name__}")
    text = subscripts.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(shapes):
        raise _error(f"{len(terms)} operand subscripts for {len(shapes)} operands", subscripts, shapes)
    if any(c not in LETTERS + ".,->" for c in text) or "-" in output or ">" in output:
        raise _error("subscripts may hold only letters, '...', ',' and one '->'", subscripts, shapes)
    spare = iter(c for c in LETTERS if c not in text)
    broadcast = 0
    for term, shape in zip(terms, shapes):
        bare = term.replace("...", "")
        if "." in bare:
            raise _error(f"'.' outside an ellipsis in {term!r}", subscripts, shapes)
        if len(bare) > len(shape) or (len(bare) < len(shape) and "..." not in term):
            raise _error(f"operand subscripts {term!r} do not match a {len(shape)}-d operand",
                         subscripts, shapes)
        broadcast = max(broadcast, len(shape) - len(bare))
    ellipsis = "".join(next(spare, "") for _ in range(broadcast))  # "": letters ran out
    if len(ellipsis) < broadcast:
        raise _error("too many axes to name with letters", subscripts, shapes)
    letters = [term.replace("...", ellipsis[broadcast - (len(shape) - len(term.replace("...", ""))):])
               for term, shape in zip(terms, shapes)]
    if arrow:
        if "." in output.replace("...", "") or output.count("...") > 1:
            raise _error(f"bad output subscripts {output!r}", subscripts, shapes)
        if broadcast and "..." not in output:
            raise _error("the operands have '...' axes the output does not name", subscripts, shapes)
        output = output.replace("...", ellipsis)
    else:
        joined = "".join(terms).replace("...", "")
        output = ellipsis + "".join(sorted(c for c in set(joined) if joined.count(c) == 1))
    if len(set(output)) != len(output) or any(c not in "".join(letters) for c in output):
        raise _error(f"output subscripts {output!r} repeat a letter or name one no operand has",
                     subscripts, shapes)
    return _own_letters_for_broadcast(letters, shapes, output, spare, subscripts), output


def _own_letters_for_broadcast(letters, shapes, output, spare, subscripts):
    """Rename each size-1 axis whose letter is longer elsewhere (NumPy broadcasts those)."""
    sizes = {}
    for term, shape in zip(letters, shapes):
        for c, size in zip(term, shape):
            if sizes.get(c, 1) not in (1, size) and size != 1:
                raise _error(f"letter {c!r} has sizes {sizes[c]} and {size}", subscripts, shapes)
            sizes[c] = max(sizes.get(c, 1), size)
    renamed = []
    for term, shape in zip(letters, shapes):
        new = list(term)
        for position, (c, size) in enumerate(zip(term, shape)):
            if size == 1 and sizes[c] > 1:
                try:
                    new[position] = next(spare)
                except StopIteration:
                    raise _error("too many axes to name with letters", subscripts, shapes) from None
        renamed.append("".join(new))
    return renamed


def gradient_spec(terms, output, index, shapes, keep=""):
    """The einsum giving operand ``index``'s gradient: (spec, [constant operand descriptions]),
    over the output's gradient, the other operands, then ``('eye', n)`` / ``('ones', n)``.
    ``keep``: output letters kept in front (``per_sample_grad``'s batch letter)."""
    target = terms[index]
    others = [term for j, term in enumerate(terms) if j != index]
    known = set(output).union(*others) if others else set(output)
    spare = iter(c for c in LETTERS if c not in "".join(terms) + output)
    result, constants, extra_terms = [], [], []
    for position, c in enumerate(target):
        size = shapes[index][position]
        if c in result:  # a repeated letter: its own letter, tied to the first by an identity
            fresh = next(spare)
            result.append(fresh)
            constants.append(("eye", size))
            extra_terms.append(c + fresh)
            known.add(c)
        else:
            result.append(c)
    for position, c in enumerate(target):
        if c not in known:
            constants.append(("ones", shapes[index][position]))
            extra_terms.append(c)
            known.add(c)
    spec = ",".join([output] + others + extra_terms) + "->" + keep + "".join(result)
    return spec, constants


def constant_operand(kind, size, like):
    """``gradient_spec``'s ``('eye', n)`` or ``('ones', n)`` as an array like ``like``."""
    xp = array_module(like)
    return xp.eye(size, dtype=like.dtype) if kind == "eye" else xp.ones(size, dtype=like.dtype)


def contract(spec, arrays):
    """``xp.einsum`` on an explicit spec, optimized (BLAS) for many or big operands."""
    xp = array_module(arrays[0])
    plan = len(arrays) > 2 or max(a.size for a in arrays) > 4096
    return xp.einsum(spec, *arrays, optimize=plan)


class Einsum(Function):
    """One einsum node; ``subscripts`` may be implicit, with ``...`` (see the module doc)."""

    def forward(self, *operands, subscripts=None):
        shapes = [a.shape for a in operands]
        if not operands:
            raise ValueError("einsum: at least one operand is needed")
        self.terms, self.output = explicit(subscripts, shapes)
        self.shapes = shapes
        self.spec = ",".join(self.terms) + "->" + self.output
        self.save_for_backward(*operands)
        return contract(self.spec, operands)

    def _gradients(self, grad, operands, einsum, constant):
        """Each wanted operand's gradient, one einsum each, on arrays or on Tensors."""
        grads = []
        for index, need in enumerate(self.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            spec, constants = gradient_spec(self.terms, self.output, index, self.shapes)
            others = [a for j, a in enumerate(operands) if j != index]
            extra = [constant(kind, size) for kind, size in constants]
            grads.append(einsum(spec, [grad] + others + extra))
        return tuple(grads)

    def backward(self, grad):
        return self._gradients(grad, self.saved_tensors, contract,
                               lambda kind, size: constant_operand(kind, size, grad))

    def vjp(self, grad, *operands):
        return self._gradients(grad, operands,
                               lambda spec, tensors: Einsum.apply(*tensors, subscripts=spec),
                               lambda kind, size: Tensor(constant_operand(kind, size, grad.data)))
