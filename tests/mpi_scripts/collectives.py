"""Worker for test_distributed.py: the collectives and DistributedOptimizer on 2 ranks.

Run as ``mpirun -n 2 python tests/mpi_scripts/collectives.py OUT_DIR``.
"""
from types import SimpleNamespace

import numpy as np

import nanodl as nd
import nanodl.distributed as dist
from nanodl import losses, nn, optim

from _common import write_results

dist.init()
rank, size = dist.rank(), dist.size()
results = {"rank": rank, "size": size, "initialized": dist.is_initialized()}

# ---------------------------------------------------------------- collectives
base = np.arange(6, dtype=np.float64).reshape(2, 3)
mine = base * (rank + 1)
summed = dist.allreduce(mine)
results["sum"] = summed.tolist()
results["sum_shape"] = list(summed.shape)
results["input_unchanged"] = bool(np.array_equal(mine, base * (rank + 1)))
results["mean"] = dist.allreduce(mine, op="mean").tolist()
results["int_mean"] = dist.allreduce(np.array([rank, 10 * rank]), op="mean").tolist()
results["int_sum_dtype"] = str(dist.allreduce(np.array([rank, 1])).dtype)
results["float32_dtype"] = str(dist.allreduce(np.ones(3, dtype=np.float32)).dtype)
results["scalar_sum"] = float(dist.allreduce(np.float64(rank + 0.5)))
results["bcast0"] = dist.broadcast(np.array([1.0, 2.0]) + 10 * rank).tolist()
results["bcast1"] = dist.broadcast(np.array([1.0, 2.0]) + 10 * rank, root=1).tolist()
try:
    dist.allreduce(np.zeros(3 + rank))
    results["mismatch"] = None
except ValueError as error:
    results["mismatch"] = str(error)
try:
    dist.broadcast(np.zeros(2, dtype=np.float32 if rank else np.float64))
    results["bcast_mismatch"] = None
except ValueError as error:
    results["bcast_mismatch"] = str(error)
dist.barrier()
results["after_mismatch"] = dist.allreduce(np.array([1.0])).tolist()  # still in step

# ---------------------------------------------------------------- optimizer equivalence
# 2 ranks x batch 16 against one process x batch 32 over the same samples: rank r takes
# positions r, r+2, ... of each global batch. The reference is trained here, on every
# rank, with a plain optimizer on the union batches (no communication).
nd.set_default_dtype("float64")
data_rng = np.random.default_rng(7)
N_SAMPLES, LOCAL_BATCH, EPOCHS = 70, 16, 4  # 70 = 2 full global batches of 32 + one of 6
x = data_rng.standard_normal((N_SAMPLES, 5))
y = data_rng.integers(0, 3, N_SAMPLES)


def make_model(seed):
    nd.manual_seed(seed)
    return nn.Sequential([nn.Dense(8, activation="tanh", input_dim=5), nn.Dense(3, input_dim=8)])


def loss_of(model, xb, yb):
    return losses.sparse_categorical_crossentropy(model(nd.Tensor(xb)), yb, from_logits=True)


def train(model, optimizer, local, epochs=EPOCHS):
    """``local`` True: this rank's shard of each global batch; False: the whole global batch."""
    params = model.parameters()
    global_batch = LOCAL_BATCH * size
    for epoch in range(epochs):
        order = np.random.default_rng(1000 + epoch).permutation(N_SAMPLES)
        for start in range(0, N_SAMPLES, global_batch):
            batch = order[start:start + global_batch]
            if local:
                batch = batch[rank::size]
            for p in params:
                p.grad = None
            loss_of(model, x[batch], y[batch]).backward()
            optimizer.step()
    return [p.data.copy() for p in params]


def max_difference(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


OPTIMIZERS = {
    "sgd_momentum": lambda: optim.SGD(lr=0.1, momentum=0.9),
    "adam": lambda: optim.Adam(lr=0.01),
    "adamw": lambda: optim.AdamW(lr=0.01),
    "adagrad": lambda: optim.Adagrad(lr=0.1),
    "rmsprop": lambda: optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
}
equivalence = {}
for name, factory in OPTIMIZERS.items():
    for mode in ("flat", "per_parameter") if name == "adam" else ("flat",):
        reference = make_model(100)
        reference_opt = factory()
        reference_opt.set_params(reference.parameters())
        expected = train(reference, reference_opt, local=False)
        model = make_model(100 + rank)  # different on each rank: the first step broadcasts
        opt = dist.DistributedOptimizer(factory(), mode=mode)
        opt.set_params(model.parameters())
        opt.broadcast_parameters()  # as fit does before its first batch
        got = train(model, opt, local=True)
        equivalence[f"{name}/{mode}"] = max_difference(got, expected)
results["equivalence"] = equivalence

# Without an explicit broadcast the first step still makes the ranks identical.
model = make_model(200 + rank)
opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1))
before = [p.data.copy() for p in model.parameters()]
loss_of(model, x[:8], y[:8]).backward()
opt.step()
after = np.concatenate([p.data.ravel() for p in model.parameters()])
results["first_step_spread"] = float(np.abs(dist.allreduce(after, "mean") - after).max())
results["first_step_calls"] = opt.allreduce_calls

# A new parameter set (a second model) is broadcast at its first step.
other = make_model(300 + rank)
opt.set_params(other.parameters())
loss_of(other, x[:8], y[:8]).backward()
opt.step()
after = np.concatenate([p.data.ravel() for p in other.parameters()])
results["new_params_spread"] = float(np.abs(dist.allreduce(after, "mean") - after).max())

# A lazily built layer: the optimizer gets its parameters once they exist.
nd.manual_seed(400 + rank)
lazy = nn.Sequential([nn.Dense(4), nn.Dense(2)])
lazy_opt = dist.DistributedOptimizer(optim.Adam(lr=0.01))
lazy(nd.Tensor(x[:2]))  # builds the layers
lazy_opt.set_params(lazy.parameters())
loss_of(lazy, x[:8], y[:8] % 2).backward()
lazy_opt.step()
after = np.concatenate([p.data.ravel() for p in lazy.parameters()])
results["lazy_spread"] = float(np.abs(dist.allreduce(after, "mean") - after).max())

# Gradients: a parameter only rank 0 has a gradient for is averaged over both ranks
# (rank 1 counts as zero); one no rank has a gradient for keeps None everywhere.
w = SimpleNamespace(data=np.zeros(3), grad=np.full(3, 4.0) if rank == 0 else None)
unused = SimpleNamespace(data=np.zeros(2), grad=None)
v = SimpleNamespace(data=np.zeros((2, 2), dtype=np.float32),
                    grad=np.full((2, 2), rank + 1.0, dtype=np.float32))
for mode in ("flat", "per_parameter"):
    w.grad = np.full(3, 4.0) if rank == 0 else None
    v.grad = np.full((2, 2), rank + 1.0, dtype=np.float32)
    sync = dist.DistributedOptimizer(optim.SGD([w, unused, v], lr=0.0), mode=mode)
    sync.synchronize()
    results[f"partial_grad/{mode}"] = w.grad.tolist()
    results[f"unused_grad/{mode}"] = unused.grad
    results[f"float32_grad/{mode}"] = [v.grad.tolist(), str(v.grad.dtype)]

# clip_grad_norm after synchronize() sees the global (averaged) gradient.
g = SimpleNamespace(data=np.zeros(2), grad=np.array([3.0, 4.0]) * (1 + 2 * rank))  # mean [6, 8]
clip_opt = dist.DistributedOptimizer(optim.SGD([g], lr=1.0))
clip_opt.synchronize()
results["clip_norm"] = optim.clip_grad_norm([g], max_norm=5.0)
clip_opt.step()  # does not reduce again
results["clipped_data"] = g.data.tolist()
results["clip_calls"] = clip_opt.allreduce_calls

# Ranks holding different parameter sets: a clear error on every rank, no hang.
bad = SimpleNamespace(data=np.zeros(2 + rank), grad=np.zeros(2 + rank))
try:
    dist.DistributedOptimizer(optim.SGD([bad], lr=0.1)).step()
    results["layout_error"] = None
except RuntimeError as error:
    results["layout_error"] = str(error)
typed = SimpleNamespace(data=np.zeros(2, dtype=np.float32 if rank else np.float64), grad=np.zeros(2))
try:
    dist.DistributedOptimizer(optim.SGD([typed], lr=0.1)).step()
    results["dtype_layout_error"] = None
except RuntimeError as error:
    results["dtype_layout_error"] = str(error)

write_results(results)
