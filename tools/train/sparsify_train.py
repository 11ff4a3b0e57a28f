"""Distillation with gradual 4x1 block pruning for a BERT encoder, on JAX (CPU).

Run by compress/sparsify.ts (`deno task cli sparsify`), which writes a bundle folder:

- bundle.json: the encoder config, the tensors of weights.f32 (name, shape, offset in floats),
  the names of the prunable linears (torch layout [out, in]), the corpus shapes, the options.
- weights.f32: the teacher's weights (embeddings, layer norms, linears, biases), float32.
- student.f32 (optional): the student's starting linear weights (e.g. OBS one-shot pruned), in
  the order of "linears"; zeros there are the starting mask.
- corpus.i32 / corpus_len.i32: token ids [count, max_len] (padded with 0) and lengths.

The student is the teacher with its linear weights trainable and masked in 4x1 blocks (4
consecutive output rows x 1 input column); embeddings, biases and layer norms stay frozen (the
TypeScript side writes back only the linear weights). Loss: 1 - cosine of the mean-pooled
embeddings, plus the squared error of the batch's cosine-similarity matrix, plus the mean
squared error of every layer's hidden states (divided by the teacher's mean square).

The sparsity follows the cubic schedule of Zhu & Gupta (2017) from the starting sparsity to the
target over the first `prune_fraction` of the steps; the mask is re-chosen every `prune_every`
steps per linear by the L2 norm of its 4x1 blocks (a zeroed block has norm 0, so masks only grow);
with scope "global" the blocks of all linears compete together (each keeps 2% of its blocks).
With "qat" the student's linears see int8 fake quantization (per-channel weights, per-token
activations) with straight-through gradients: quantization-aware training.

Progress goes to stdout as one JSON object per line; checkpoints to checkpoint.npz (atomic
rename); the result to result.f32 + result.json. `--resume` continues from checkpoint.npz.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def load_bundle(folder):
    with open(os.path.join(folder, "bundle.json")) as f:
        meta = json.load(f)
    flat = np.fromfile(os.path.join(folder, "weights.f32"), dtype=np.float32)
    tensors = {}
    for t in meta["tensors"]:
        n = int(np.prod(t["shape"]))
        tensors[t["name"]] = flat[t["offset"] : t["offset"] + n].reshape(t["shape"])
    ids = np.fromfile(os.path.join(folder, "corpus.i32"), dtype=np.int32)
    lens = np.fromfile(os.path.join(folder, "corpus_len.i32"), dtype=np.int32)
    ids = ids.reshape(len(lens), -1)
    student = None
    path = os.path.join(folder, "student.f32")
    if os.path.exists(path):
        s = np.fromfile(path, dtype=np.float32)
        student, off = {}, 0
        for name in meta["linears"]:
            shape = tensors[name].shape
            n = shape[0] * shape[1]
            student[name] = s[off : off + n].reshape(shape)
            off += n
        if off != len(s):
            raise SystemExit(f"student.f32 holds {len(s)} floats, expected {off}")
    return meta, tensors, ids, lens, student


def block_norms(w):
    """L2 norm of each 4x1 block of w [out, in] (a short last group of rows is a block)."""
    out, inn = w.shape
    pad = (-out) % 4
    if pad:
        w = np.concatenate([w, np.zeros((pad, inn), w.dtype)], axis=0)
    return np.sqrt((w.reshape(-1, 4, inn) ** 2).sum(axis=1))


def block_mask(w, sparsity):
    """Float mask [out, in] zeroing the round(sparsity * blocks) 4x1 blocks of smallest norm."""
    out, inn = w.shape
    norms = block_norms(w)
    count = int(round(sparsity * norms.size))
    keep = np.ones(norms.size, np.float32)
    if count > 0:
        order = np.argsort(norms.reshape(-1), kind="stable")
        keep[order[:count]] = 0.0
    return np.repeat(keep.reshape(norms.shape), 4, axis=0)[:out]


def block_sparsity(w):
    return float((block_norms(w) == 0).mean())


def overall_sparsity(lin, keys):
    """Fraction of zero 4x1 blocks over all the linears (weighted by their block counts)."""
    norms = [block_norms(np.asarray(lin[k])) for k in keys]
    return float(sum((n == 0).sum() for n in norms) / sum(n.size for n in norms))


# Under a global scope every linear keeps at least this fraction of its 4x1 blocks, so that no
# layer is pruned away whole.
GLOBAL_MIN_KEEP = 0.02


def global_block_masks(lin, keys, sparsity):
    """Masks zeroing the round(sparsity * all blocks) 4x1 blocks of smallest norm over all the
    linears together (each keeping its GLOBAL_MIN_KEEP largest blocks)."""
    norms = {k: block_norms(lin[k]) for k in keys}
    ranked = []
    for k in keys:
        n = norms[k].reshape(-1).copy()
        floor = max(1, int(np.ceil(GLOBAL_MIN_KEEP * n.size)))
        n[np.argsort(n, kind="stable")[-floor:]] = np.inf
        ranked.append(n)
    flat = np.concatenate(ranked)
    count = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, np.float32)
    if count > 0:
        keep[np.argsort(flat, kind="stable")[:count]] = 0.0
    masks, off = {}, 0
    for k in keys:
        size = norms[k].size
        block_keep = keep[off:off + size].reshape(norms[k].shape)
        off += size
        masks[k] = np.repeat(block_keep, 4, axis=0)[:lin[k].shape[0]]
    return masks


def scoped_masks(lin, keys, sparsity, scope):
    if scope == "global":
        return global_block_masks(lin, keys, sparsity)
    return {k: block_mask(lin[k], sparsity) for k in keys}


def cubic(step, total_prune, s0, s1):
    if total_prune is None:  # the step count is not known yet: keep the start
        return s0
    if total_prune <= 0 or step >= total_prune:
        return s1
    return s1 + (s0 - s1) * (1.0 - step / total_prune) ** 3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    folder = args.bundle
    meta, tensors, ids, lens, student = load_bundle(folder)
    opt = meta["options"]
    cfg = meta["config"]

    import jax
    import jax.numpy as jnp
    import optax

    heads = cfg["numHeads"]
    hidden = cfg["hiddenSize"]
    layers = cfg["numLayers"]
    eps_emb = meta["epsilon"]["embeddings"]
    approx = cfg["hiddenAct"] == "gelu_tanh"
    L = meta["linears"]
    frozen = {k: jnp.asarray(v) for k, v in tensors.items() if k not in L}
    teacher_lin = {k: jnp.asarray(tensors[k]) for k in L}

    def ln(x, g, b, eps):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + eps) * g + b

    qat = bool(opt.get("qat", False))
    act_qmax = float(opt.get("qatActivationQmax", 255))

    def ste(x, xq):
        # Straight-through: the forward pass sees xq, the gradient passes to x unchanged.
        return x + jax.lax.stop_gradient(xq - x)

    def fake_quant_weight(w):
        # Symmetric int8 per output channel, as cli quantize writes the weights.
        scale = jnp.maximum(jnp.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        return ste(w, jnp.clip(jnp.round(w / scale), -127, 127) * scale)

    def fake_quant_tokens(h):
        # Asymmetric per token over [min(x, 0), max(x, 0)] in act_qmax steps, as the kernels
        # quantize activations (8 bits with AVX-512 VNNI, 7 on AVX2).
        lo = jnp.minimum(h.min(axis=-1, keepdims=True), 0.0)
        hi = jnp.maximum(h.max(axis=-1, keepdims=True), 0.0)
        scale = jnp.maximum(hi - lo, 1e-12) / act_qmax
        zero = jnp.round(-lo / scale)
        q = jnp.clip(jnp.round(h / scale) + zero, 0.0, act_qmax)
        return ste(h, (q - zero) * scale)

    def forward(lin, ids_b, mask_b, quantized=False):
        f = frozen
        s = ids_b.shape[1]
        x = f["embeddings.word"][ids_b] + f["embeddings.position"][:s][None]
        if "embeddings.token_type" in f:
            x = x + f["embeddings.token_type"][0][None, None]
        x = ln(x, f["embeddings.norm.gamma"], f["embeddings.norm.beta"], eps_emb)
        bias = (1.0 - mask_b[:, None, None, :]) * -1e9
        d = hidden // heads
        states = []
        for i in range(layers):
            P = f"layers.{i}."

            def dense(name, h):
                w = lin[P + name + ".weight"]
                if quantized:
                    h, w = fake_quant_tokens(h), fake_quant_weight(w)
                return h @ w.T + f[P + name + ".bias"]

            def split(t):
                return t.reshape(t.shape[0], s, heads, d).transpose(0, 2, 1, 3)

            q, k, v = (split(dense(n, x)) for n in ("query", "key", "value"))
            a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias, axis=-1)
            ctx = (a @ v).transpose(0, 2, 1, 3).reshape(x.shape)
            eps1 = meta["epsilon"][f"layers.{i}.attentionNorm"]
            eps2 = meta["epsilon"][f"layers.{i}.outputNorm"]
            x = ln(x + dense("attentionOutput", ctx), f[P + "attentionNorm.gamma"],
                   f[P + "attentionNorm.beta"], eps1)
            h = jax.nn.gelu(dense("intermediate", x), approximate=approx)
            x = ln(x + dense("output", h), f[P + "outputNorm.gamma"], f[P + "outputNorm.beta"],
                   eps2)
            states.append(x)
        m = mask_b[:, :, None]
        pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        if meta["pooling"] == "cls":
            pooled = x[:, 0]
        return states, pooled

    w_pool = float(opt["poolWeight"])
    w_hidden = float(opt["hiddenWeight"])

    def unit(v):
        return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-9)

    def loss_fn(lin, masks, ids_b, mask_b):
        lin_m = {k: lin[k] * masks[k] for k in L}
        t_states, t_pool = forward(teacher_lin, ids_b, mask_b)
        t_states = [jax.lax.stop_gradient(t) for t in t_states]
        t_pool = jax.lax.stop_gradient(t_pool)
        s_states, s_pool = forward(lin_m, ids_b, mask_b, quantized=qat)
        su, tu = unit(s_pool), unit(t_pool)
        cos = 1.0 - (su * tu).sum(-1).mean()
        sim = ((su @ su.T - tu @ tu.T) ** 2).mean()
        tok = mask_b[:, :, None]
        n = tok.sum() * hidden
        hid = 0.0
        for s_h, t_h in zip(s_states, t_states):
            scale = ((t_h ** 2) * tok).sum() / n
            hid = hid + (((s_h - t_h) ** 2) * tok).sum() / n / scale
        hid = hid / layers
        total = w_pool * (cos + sim) + w_hidden * hid
        return total, {"cos": cos, "sim": sim, "hidden": hid}

    # Batches: texts grouped by padded length (a few shapes, so few compilations).
    max_len = ids.shape[1]
    buckets = sorted({b for b in (16, 32, 64, 128, 256, 512) if b < max_len} | {max_len})
    rng = np.random.default_rng(int(opt["seed"]))
    order_all = rng.permutation(len(lens))
    n_valid = min(int(opt["validTexts"]), len(lens) // 10)
    valid_idx, train_idx = order_all[:n_valid], order_all[n_valid:]
    bs = int(opt["batchSize"])

    def bucket_of(n):
        return next(b for b in buckets if n <= b)

    def make_batches(idx, shuffle_rng):
        groups = {}
        for i in idx:
            groups.setdefault(bucket_of(int(lens[i])), []).append(i)
        out = []
        for b, members in groups.items():
            members = np.array(members)
            if shuffle_rng is not None:
                shuffle_rng.shuffle(members)
            for j in range(0, len(members) - bs + 1 if shuffle_rng is not None else len(members), bs):
                out.append((b, members[j : j + bs]))
        if shuffle_rng is not None:
            shuffle_rng.shuffle(out)
        return out

    def arrays(b, members):
        x = ids[members, :b]
        m = (np.arange(b)[None, :] < lens[members][:, None]).astype(np.float32)
        return jnp.asarray(x), jnp.asarray(m)

    lr = float(opt["learningRate"])
    warmup = int(opt["warmupSteps"])

    state_path = os.path.join(folder, "checkpoint.npz")
    lin = {k: np.array(tensors[k]) if student is None else np.array(student[k]) for k in L}
    scope = opt.get("scope", "per-layer")
    s_start = overall_sparsity(lin, L)
    step = 0
    elapsed = 0.0
    total_steps = int(opt["steps"]) if opt.get("steps") else 0
    opt_leaves = None
    epoch_seed = 0
    if args.resume:
        if not os.path.exists(state_path):
            raise SystemExit(f"--resume: no checkpoint at {state_path}")
        ck = np.load(state_path)
        lin = {k: ck["lin/" + k] for k in L}
        step = int(ck["step"])
        elapsed = float(ck["elapsed"])
        total_steps = int(ck["total_steps"])
        s_start = float(ck["s_start"])
        epoch_seed = int(ck["epoch_seed"])
        opt_leaves = [ck[f"opt/{i}"] for i in range(int(ck["opt_count"]))]
        if opt.get("steps") and int(opt["steps"]) > total_steps:
            total_steps = int(opt["steps"])  # resumed with more steps: train on to them
        emit("resumed", step=step, elapsed=elapsed, totalSteps=total_steps)

    target = float(opt["sparsity"])
    prune_every = int(opt["pruneEvery"])
    budget = float(opt["timeBudgetSeconds"])

    def schedule(total):
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), max(total, warmup + 1),
                                                  lr * 0.05)

    # The optimizer's schedule needs the step count; with a time budget it is fixed after the
    # first timed steps (and kept in the checkpoint).
    def make_opt(total):
        return optax.adamw(schedule(total), weight_decay=0.0)

    def prune_fraction_steps(total):
        return int(total * float(opt["pruneFraction"]))

    def current_masks(lin, step, total):
        s = cubic(step, prune_fraction_steps(total) if total else None, s_start, target)
        return scoped_masks(lin, L, s, scope), s

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    eval_fn = jax.jit(loss_fn)

    def valid_loss(lin_j, masks_j):
        tot, n = 0.0, 0
        for b, members in make_batches(valid_idx, None):
            x, m = arrays(b, members)
            v, _ = eval_fn(lin_j, masks_j, x, m)
            tot += float(v) * len(members)
            n += len(members)
        return tot / max(n, 1)

    def save(lin_j, opt_state, masks_j):
        leaves = jax.tree_util.tree_leaves(opt_state)
        data = {"lin/" + k: np.asarray(lin_j[k] * masks_j[k]) for k in L}
        data.update({f"opt/{i}": np.asarray(x) for i, x in enumerate(leaves)})
        tmp = state_path + ".tmp.npz"
        np.savez(tmp, step=step, elapsed=elapsed, total_steps=total_steps, s_start=s_start,
                 epoch_seed=epoch_seed, opt_count=len(leaves), **data)
        os.replace(tmp, state_path)
        emit("checkpoint", step=step, path=state_path)

    # The time budget is per invocation (a resumed run gets its own); `elapsed` is cumulative.
    t_proc = time.time()
    elapsed0 = elapsed
    masks, s_now = current_masks(lin, step, total_steps)
    lin_j = {k: jnp.asarray(lin[k] * masks[k]) for k in L}
    masks_j = {k: jnp.asarray(v) for k, v in masks.items()}
    emit("start", step=step, sparsity=s_now, startSparsity=s_start, target=target, qat=qat,
         trainTexts=int(len(train_idx)), validTexts=int(n_valid), devices=str(jax.devices()))
    # The teacher's pooled embeddings of a few texts, for the caller to compare with ONNX Runtime
    # (a check that this forward pass is the model's).
    chk = valid_idx[:8]
    b = bucket_of(int(lens[chk].max()))
    x, m = arrays(b, chk)
    _, t_pool = jax.jit(forward)(teacher_lin, x, m)
    with open(os.path.join(folder, "teacher_check.json"), "w") as f:
        json.dump({"ids": np.asarray(x).tolist(), "lengths": lens[chk].tolist(),
                   "pooled": np.asarray(t_pool).tolist()}, f)
    v0 = valid_loss(lin_j, masks_j)
    emit("valid", step=step, loss=v0)

    optimizer = make_opt(max(total_steps, 1))
    opt_state = optimizer.init(lin_j)
    if opt_leaves is not None:
        treedef = jax.tree_util.tree_structure(opt_state)
        opt_state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in opt_leaves])

    def update(lin_j, opt_state, grads, masks_j):
        upd, opt_state = optimizer.update(grads, opt_state, lin_j)
        lin_j = optax.apply_updates(lin_j, upd)
        return {k: lin_j[k] * masks_j[k] for k in L}, opt_state

    update_j = jax.jit(update)
    # Compile every batch shape before timing steps (one step per padded length, discarded).
    for b in buckets:
        x0 = jnp.zeros((bs, b), jnp.int32)
        m0 = jnp.ones((bs, b), jnp.float32)
        (l0, _), g0 = grad_fn(lin_j, masks_j, x0, m0)
        jax.block_until_ready(update_j(lin_j, opt_state, g0, masks_j))
    emit("compiled", shapes=buckets, seconds=time.time() - t_proc)
    last_ck = time.time()
    timing_start = None
    batches, bi = [], 0
    calibrate_at = 20  # steps used to time a step
    replan = None  # (step, time) of the second timing
    while True:
        if total_steps and step >= total_steps:
            break
        if time.time() - t_proc >= budget:
            emit("budget", step=step, elapsed=elapsed0 + time.time() - t_proc)
            break
        if bi >= len(batches):
            batches = make_batches(train_idx, np.random.default_rng(int(opt["seed"]) + epoch_seed))
            epoch_seed += 1
            bi = 0
        b, members = batches[bi]
        bi += 1
        x, m = arrays(b, members)
        (loss, parts), grads = grad_fn(lin_j, masks_j, x, m)
        lin_j, opt_state = update_j(lin_j, opt_state, grads, masks_j)
        step += 1
        if not total_steps:
            if step == 2:
                jax.block_until_ready(lin_j)
                timing_start = time.time()
            elif step == 2 + calibrate_at:
                jax.block_until_ready(lin_j)
                per_step = (time.time() - timing_start) / calibrate_at
                left = budget - (time.time() - t_proc) - 60.0  # room for the last checkpoint
                total_steps = step + max(1, int(left / per_step * 0.95))
                emit("plan", totalSteps=total_steps, secondsPerStep=per_step)
                optimizer = make_opt(total_steps)  # same state layout, new schedule
                update_j = jax.jit(update)
                replan = (step + 100, time.time())
        elif replan is not None and step == replan[0]:
            # Once more over 100 steps (the first timing can be off while other work starts).
            jax.block_until_ready(lin_j)
            per_step = (time.time() - replan[1]) / 100
            left = budget - (time.time() - t_proc) - 60.0
            total_steps = step + max(1, int(left / per_step * 0.95))
            emit("plan", totalSteps=total_steps, secondsPerStep=per_step, replanned=True)
            optimizer = make_opt(total_steps)
            update_j = jax.jit(update)
            replan = None
        if total_steps and step % prune_every == 0 and step <= prune_fraction_steps(total_steps) + prune_every:
            lin_np = {k: np.asarray(v) for k, v in lin_j.items()}
            masks, s_now = current_masks(lin_np, step, total_steps)
            masks_j = {k: jnp.asarray(v) for k, v in masks.items()}
            lin_j = {k: lin_j[k] * masks_j[k] for k in L}
        elapsed = elapsed0 + time.time() - t_proc
        if step % int(opt["logEvery"]) == 0:
            emit("step", step=step, totalSteps=total_steps, loss=float(loss),
                 cos=float(parts["cos"]), sim=float(parts["sim"]), hidden=float(parts["hidden"]),
                 sparsity=s_now, elapsed=elapsed)
        if time.time() - last_ck >= float(opt["checkpointSeconds"]):
            save(lin_j, opt_state, masks_j)
            last_ck = time.time()
        if int(opt["validEvery"]) and step % int(opt["validEvery"]) == 0:
            emit("valid", step=step, loss=valid_loss(lin_j, masks_j))

    # The result is always at the target sparsity (a run stopped early by its budget prunes the
    # rest at once).
    lin_np = {k: np.asarray(v) for k, v in lin_j.items()}
    masks = scoped_masks(lin_np, L, target, scope)
    masks_j = {k: jnp.asarray(v) for k, v in masks.items()}
    lin_j = {k: jnp.asarray(lin_np[k] * masks[k]) for k in L}
    elapsed = elapsed0 + time.time() - t_proc
    save(lin_j, opt_state, masks_j)
    final_valid = valid_loss(lin_j, masks_j)
    out = np.concatenate([np.asarray(lin_j[k], np.float32).reshape(-1) for k in L])
    out.tofile(os.path.join(folder, "result.f32"))
    summary = {
        "steps": step,
        "totalSteps": total_steps,
        "elapsedSeconds": elapsed,
        "startValidLoss": v0,
        "validLoss": final_valid,
        "sparsity": overall_sparsity(lin_j, L),
        "scope": scope,
        "jax": jax.__version__,
    }
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(summary, f)
    emit("done", **summary)


if __name__ == "__main__":
    sys.exit(main())
