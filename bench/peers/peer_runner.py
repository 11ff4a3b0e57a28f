#!/usr/bin/env python3
"""Run one ONNX encoder model in one peer runtime and report latencies as JSON.

sparsebert's comparison harness drives this script (through bench/peers/mod.ts) so that every
Python peer is measured the same way, on the same ONNX file, inputs, batch, sequence length and
thread count.

Usage
-----
    python peer_runner.py --runtime ort|openvino|deepsparse|torch --model PATH \
        --batch B --seq S --threads T [--streams K] [--seed N] \
        [--warmup N --iterations N | --time SECONDS] [--serve] [--self-test]

One-shot mode prints one JSON line (the load info plus one measurement) and exits.
``--serve`` loads the model once, prints a ``{"event": "ready", ...}`` line, then reads one JSON
command per line on stdin and answers one JSON line each:

    {"cmd": "run", "iterations": 10, "warmup": 0}   measure N iterations per stream
    {"cmd": "run", "seconds": 2.0, "warmup": 1}      measure for a time budget
    {"cmd": "run", "iterations": 5, "settle_ms": 200} sleep first, so that the worker threads
                                                     of the peer that ran before stop spinning
    {"cmd": "info"}                                  repeat the ready line
    {"cmd": "quit"}                                  answer {"event": "bye"} and exit 0

A command that fails answers ``{"ok": false, "error": ...}`` and the process stays alive; a load
failure prints ``{"ok": false, ...}`` and exits 1. Only protocol lines go to stdout: anything the
runtimes print on stdout is redirected to stderr at the file-descriptor level. A runtime that
aborts (DeepSparse does, on graphs it cannot plan) leaves its message on stderr only.

Inputs
------
The model's inputs must be a subset of ``input_ids``, ``attention_mask`` and ``token_type_ids``
(integer types; int64 in every export we know). Token ids are in [1000, 2000), drawn from a
32-bit LCG that bench/peers/ort_node.ts reproduces exactly (``bertInputIds``): state starts at
``seed``, ``state = (state * 1664525 + 1013904223) mod 2**32``, ``id = 1000 + (state >> 16) %
1000``, row-major over [batch, seq]. The attention mask is all ones, token types all zeros.

Thread settings per runtime (``--threads T``, ``--streams K``)
--------------------------------------------------------------
- ort: one ``InferenceSession`` per stream with ``intra_op_num_threads=T``,
  ``inter_op_num_threads=1``, ``ORT_SEQUENTIAL``, ``ORT_ENABLE_ALL``; CPU provider only.
- openvino: shapes fixed to [B, S] by ``reshape``; ``INFERENCE_NUM_THREADS=T*K``,
  ``NUM_STREAMS=K``, ``PERFORMANCE_HINT=LATENCY`` (K = 1) or ``THROUGHPUT`` (K > 1),
  ``INFERENCE_PRECISION_HINT=f32``; one infer request per stream, its input tensors bound once
  at load (filling inputs inside ``infer()`` from several threads deadlocked in openvino
  2026.4). Effective values are read back.
- deepsparse: ``compile_model(batch_size=B, num_cores=T*K, num_streams=K,
  scheduler=single_stream|multi_stream, input_shapes=[[B, S]] * n)``.
- torch: the ONNX graph is converted with onnx2torch; ``torch.set_num_threads(T)``,
  ``torch.set_num_interop_threads(1)``, ``torch.inference_mode()``. Graphs onnx2torch cannot
  convert fail at stage ``convert`` with the converter's message: onnx2torch 1.5.15 has no
  DequantizeLinear/MatMulInteger converters, so there is no torch int8 path. With K > 1 the K
  Python threads share torch's global thread setting.

With K > 1, K Python threads each run their own loop (every runtime releases the GIL while it
computes); latencies of all streams are pooled and items/s is ``B * total iterations / wall``.

Quantized models
----------------
- ort and openvino run all three forms ORT's quantizer writes: dynamic (DynamicQuantizeLinear +
  MatMulInteger), static QDQ (QuantizeLinear/DequantizeLinear around MatMul) and static
  QOperator (QLinearMatMul).
- deepsparse 1.8.0 (measured on AVX2 Zen 3, no VNNI): static QDQ and QOperator models compile and
  run, but int8 is emulated on AVX2 and ran several times slower than the fp32 model (bert-mini,
  seq 128, 2 threads: about 1 s against 0.14 s, on a loaded machine); an ORT dynamic-quant
  model (DynamicQuantizeLinear + MatMulInteger) aborts the process at compile time with
  ``Assertion at ./src/include/wand/engine/execution/planner.hpp:120``. Give DeepSparse the QDQ
  form.

Output
------
Every result has ``latencies_ms`` (per iteration, all streams), ``median_ms``, ``p90_ms``,
``p99_ms`` (numpy ``percentile`` with linear interpolation), ``mean_ms``, ``min_ms``,
``max_ms``, ``items_per_s``, ``wall_s``, and ``output`` (name, shape, mean, mean_abs and the
first values of the first output) so that the harness can check the peers agree. The load
info has ``versions``, ``config`` (the effective settings), ``model`` (inputs and quantization
form) and ``load_ms``.

``--self-test`` writes a tiny embedding + attention-like ONNX model (Gather, MatMul, Softmax)
into a temporary folder and uses it as ``--model``; tools/peers/setup_peers.ts uses it to check
that a runtime imports and runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback

RUNTIMES = ("ort", "openvino", "deepsparse", "torch")
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_ITERATIONS = 1_000_000
MAX_STREAMS = 64

_PROTO = sys.stdout


def claim_stdout() -> None:
    """Keeps a private copy of stdout for protocol lines and points fd 1 at stderr.

    Banners printed by native code (DeepSparse prints one) then cannot corrupt the protocol.
    """
    global _PROTO
    _PROTO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr


class PeerFailure(Exception):
    """A failure reported to the harness as ``{"ok": false}`` with its stage."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def emit(obj: dict) -> None:
    """Writes one protocol line."""
    _PROTO.write(json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n")
    _PROTO.flush()


def lcg_input_ids(batch: int, seq: int, seed: int):
    """Token ids in [1000, 2000), identical to ``bertInputIds`` in bench/peers/ort_node.ts."""
    import numpy as np

    out = np.empty(batch * seq, dtype=np.int64)
    state = seed & 0xFFFFFFFF
    for i in range(batch * seq):
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = 1000 + (state >> 16) % 1000
    return out.reshape(batch, seq)


ONNX_INT_TYPES = {6: "int32", 7: "int64"}


def inspect_model(path: str) -> dict:
    """Reads input names/types and the quantization form without loading external weights."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        elem = value.type.tensor_type.elem_type
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        inputs.append({"name": value.name, "elem_type": elem, "dims": dims})
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    if ops.get("MatMulInteger") or ops.get("DynamicQuantizeLinear"):
        form = "dynamic-int8"
    elif ops.get("QLinearMatMul"):
        form = "qoperator-int8"
    elif ops.get("QuantizeLinear") or ops.get("DequantizeLinear"):
        form = "qdq-int8"
    else:
        form = "fp32"
    for inp in inputs:
        if inp["name"] not in BERT_INPUTS:
            raise PeerFailure(
                "inputs",
                f"Model input '{inp['name']}' is not one of {', '.join(BERT_INPUTS)}",
            )
        if inp["elem_type"] not in ONNX_INT_TYPES:
            raise PeerFailure(
                "inputs",
                f"Model input '{inp['name']}' has ONNX element type {inp['elem_type']}, "
                "expected int64 (7) or int32 (6)",
            )
    return {
        "path": os.path.abspath(path),
        "bytes": os.path.getsize(path),
        "inputs": [
            {"name": i["name"], "dtype": ONNX_INT_TYPES[i["elem_type"]], "dims": i["dims"]}
            for i in inputs
        ],
        "outputs": [o.name for o in model.graph.output],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "quantization": form,
        "node_count": len(model.graph.node),
    }


def make_feeds(model_info: dict, batch: int, seq: int, seed: int) -> dict:
    """Builds the input arrays, keyed by input name, in each input's declared dtype."""
    import numpy as np

    ids = lcg_input_ids(batch, seq, seed)
    base = {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    return {i["name"]: base[i["name"]].astype(i["dtype"]) for i in model_info["inputs"]}


def write_self_test_model(folder: str) -> str:
    """Writes a tiny BERT-shaped ONNX model (embedding, one projection, softmax attention)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    hidden = 32
    emb = numpy_helper.from_array(
        (rng.standard_normal((2048, hidden)) * 0.1).astype(np.float32), "emb"
    )
    w = numpy_helper.from_array(
        (rng.standard_normal((hidden, hidden)) * 0.2).astype(np.float32), "w"
    )
    perm = [0, 2, 1]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"]),
        helper.make_node("Mul", ["x", "mu"], ["xm"]),
        helper.make_node("MatMul", ["xm", "w"], ["q"]),
        helper.make_node("Transpose", ["xm"], ["kt"], perm=perm),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "xm"], ["last_hidden_state"]),
    ]
    ax = numpy_helper.from_array(np.array([2], dtype=np.int64), "ax")
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    out = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]
    )
    graph = helper.make_graph(nodes, "self_test", inputs, [out], [emb, w, ax])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path = os.path.join(folder, "self_test.onnx")
    onnx.save(model, path)
    return path


class Peer:
    """One loaded model in one runtime, with ``streams`` independent runners."""

    runtime = ""

    def __init__(self, args: argparse.Namespace, model_info: dict):
        self.args = args
        self.model_info = model_info
        self.config: dict = {}
        self.versions: dict = {}

    def runner(self, stream: int):
        """Returns a callable running one inference and returning the outputs list."""
        raise NotImplementedError


def _version(module_name: str) -> str:
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:  # noqa: BLE001 - a missing distribution just has no version
        return "unknown"


class OrtPeer(Peer):
    runtime = "ort"

    def __init__(self, args, model_info, feeds):
        super().__init__(args, model_info)
        import onnxruntime as ort

        self.versions = {"onnxruntime": ort.__version__}
        self.sessions = []
        for _ in range(args.streams):
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sessions.append(
                ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
            )
        self.feeds = feeds
        self.config = {
            "intra_op_num_threads": args.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": "all",
            "providers": self.sessions[0].get_providers(),
            "sessions": args.streams,
        }

    def runner(self, stream):
        session, feeds = self.sessions[stream], self.feeds
        return lambda: session.run(None, feeds)


class OpenVinoPeer(Peer):
    runtime = "openvino"

    def __init__(self, args, model_info, feeds):
        super().__init__(args, model_info)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(args.model)
        model.reshape({i["name"]: [args.batch, args.seq] for i in model_info["inputs"]})
        total = args.threads * args.streams
        props = {
            "INFERENCE_NUM_THREADS": total,
            "NUM_STREAMS": args.streams,
            "PERFORMANCE_HINT": "LATENCY" if args.streams == 1 else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(model, "CPU", props)
        self.requests = [self.compiled.create_infer_request() for _ in range(args.streams)]
        # Inputs are bound once per request, here on one thread: filling them inside infer()
        # from several Python threads at once deadlocked (openvino 2026.4, streams > 1).
        self.feeds = feeds
        for request in self.requests:
            for name, array in feeds.items():
                request.set_tensor(name, ov.Tensor(array))
        effective = {}
        for key in (
            "INFERENCE_NUM_THREADS",
            "NUM_STREAMS",
            "PERFORMANCE_HINT",
            "INFERENCE_PRECISION_HINT",
            "ENABLE_HYPER_THREADING",
            "ENABLE_CPU_PINNING",
            "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
        ):
            try:
                effective[key] = str(self.compiled.get_property(key))
            except Exception:  # noqa: BLE001 - property not exposed by this version
                pass
        self.versions = {"openvino": ov.get_version()}
        try:
            self.versions["device"] = core.get_property("CPU", "FULL_DEVICE_NAME")
        except Exception:  # noqa: BLE001
            pass
        self.config = {"requested": {k: str(v) for k, v in props.items()}, "effective": effective}

    def runner(self, stream):
        request = self.requests[stream]

        def run():
            request.infer()
            return [request.get_output_tensor(0).data]

        return run


class DeepSparsePeer(Peer):
    runtime = "deepsparse"

    def __init__(self, args, model_info, feeds):
        super().__init__(args, model_info)
        import deepsparse
        from deepsparse import compile_model

        n = len(model_info["inputs"])
        scheduler = "single_stream" if args.streams == 1 else "multi_stream"
        self.engine = compile_model(
            args.model,
            batch_size=args.batch,
            num_cores=args.threads * args.streams,
            num_streams=args.streams,
            scheduler=scheduler,
            input_shapes=[[args.batch, args.seq]] * n,
        )
        self.feeds = [feeds[i["name"]] for i in model_info["inputs"]]
        self.versions = {"deepsparse": deepsparse.__version__}
        self.config = {
            "batch_size": args.batch,
            "num_cores": self.engine.num_cores,
            "num_streams": self.engine.num_streams,
            "scheduler": str(self.engine.scheduler),
            "cpu_avx_type": self.engine.cpu_avx_type,
            "cpu_vnni": bool(self.engine.cpu_vnni),
            "fraction_of_supported_ops": self.engine.fraction_of_supported_ops,
        }

    def runner(self, stream):
        engine, feeds = self.engine, self.feeds
        return lambda: engine.run(feeds, val_inp=False)


class TorchPeer(Peer):
    runtime = "torch"

    def __init__(self, args, model_info, feeds):
        super().__init__(args, model_info)
        import onnx
        import torch

        try:
            from onnx2torch import convert
        except Exception as exc:  # noqa: BLE001
            raise PeerFailure("import", f"onnx2torch is not importable: {exc}") from exc
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set in this process
        try:
            self.module = convert(onnx.load(args.model)).eval()
        except Exception as exc:  # noqa: BLE001
            raise PeerFailure(
                "convert",
                f"onnx2torch cannot convert this model ({model_info['quantization']}): "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        self.torch = torch
        self.feeds = [torch.from_numpy(feeds[i["name"]]) for i in model_info["inputs"]]
        self.versions = {"torch": torch.__version__, "onnx2torch": _version("onnx2torch")}
        self.config = {
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "inference_mode": True,
            "converter": "onnx2torch",
        }

    def runner(self, stream):
        torch, module, feeds = self.torch, self.module, self.feeds

        def run():
            with torch.inference_mode():
                out = module(*feeds)
            if isinstance(out, (tuple, list)):
                return [o.numpy() for o in out]
            return [out.numpy()]

        return run


PEERS = {
    "ort": OrtPeer,
    "openvino": OpenVinoPeer,
    "deepsparse": DeepSparsePeer,
    "torch": TorchPeer,
}


def summarize(latencies: list[float], items: int, wall: float) -> dict:
    import numpy as np

    arr = np.asarray(latencies, dtype=np.float64)
    return {
        "iterations": len(latencies),
        "latencies_ms": [round(x, 4) for x in latencies],
        "median_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "items_per_s": items / wall if wall > 0 else 0.0,
        "wall_s": wall,
    }


def _finite(x) -> float | None:
    """JSON has no NaN/Infinity: non-finite values become null (and are counted)."""
    x = float(x)
    return x if math.isfinite(x) else None


def output_summary(outputs) -> dict:
    import numpy as np

    first = np.asarray(outputs[0])
    flat = first.reshape(-1).astype(np.float64)
    return {
        "shape": list(first.shape),
        "mean": _finite(flat.mean()) if flat.size else 0.0,
        "mean_abs": _finite(np.abs(flat).mean()) if flat.size else 0.0,
        "non_finite": int(flat.size - np.isfinite(flat).sum()),
        "first": [_finite(x) for x in flat[:4]],
    }


def measure(peer: Peer, iterations: int | None, seconds: float | None, warmup: int) -> dict:
    """Runs ``warmup`` then ``iterations`` (or ``seconds``) on every stream concurrently."""
    streams = peer.args.streams
    runners = [peer.runner(s) for s in range(streams)]
    per_stream: list[list[float]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []
    last_outputs: list = [None]
    start_barrier = threading.Barrier(streams + 1)

    def loop(s: int) -> None:
        run = runners[s]
        try:
            for _ in range(warmup):
                out = run()
            start_barrier.wait()
            end_at = time.perf_counter() + (seconds or 0.0)
            lat = per_stream[s]
            i = 0
            while True:
                if iterations is not None and i >= iterations:
                    break
                if seconds is not None and i > 0 and time.perf_counter() >= end_at:
                    break
                if i >= MAX_ITERATIONS:
                    break
                t0 = time.perf_counter()
                out = run()
                lat.append((time.perf_counter() - t0) * 1000.0)
                i += 1
            if s == 0:
                last_outputs[0] = out
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the harness
            errors.append(exc)
            start_barrier.abort()

    threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in range(streams)]
    for t in threads:
        t.start()
    try:
        start_barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    if errors:
        exc = errors[0]
        raise PeerFailure("run", f"{type(exc).__name__}: {exc}") from exc
    latencies = [x for lat in per_stream for x in lat]
    items = peer.args.batch * len(latencies)
    result = summarize(latencies, items, wall)
    result["warmup"] = warmup
    result["streams"] = streams
    result["per_stream_iterations"] = [len(lat) for lat in per_stream]
    if last_outputs[0] is not None:
        result["output"] = output_summary(last_outputs[0])
    return result


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peer_runner.py",
        description="Time one ONNX encoder in a peer runtime; prints JSON lines on stdout.",
        epilog="The docstring at the top of this file documents the serve protocol, the input "
        "generator, the thread settings and the quantized forms each runtime accepts.",
    )
    p.add_argument("--runtime", required=True, choices=RUNTIMES)
    p.add_argument("--model", help="ONNX file (required unless --self-test)")
    p.add_argument("--self-test", action="store_true", help="use a tiny generated model")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--seq", type=positive_int, default=128)
    p.add_argument("--threads", type=positive_int, default=1, help="threads per stream")
    p.add_argument("--streams", type=positive_int, default=1, help="concurrent inference loops")
    p.add_argument("--seed", type=non_negative_int, default=1)
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--iterations", type=positive_int, help="iterations per stream (default 10)")
    p.add_argument("--time", type=positive_float, dest="seconds", help="measure for SECONDS")
    p.add_argument("--serve", action="store_true", help="stay alive, read JSON commands on stdin")
    args = p.parse_args(argv)
    if args.iterations is not None and args.seconds is not None:
        p.error("give --iterations or --time, not both")
    if args.iterations is None and args.seconds is None:
        args.iterations = 10
    if args.iterations is not None and args.iterations > MAX_ITERATIONS:
        p.error(f"--iterations {args.iterations} exceeds {MAX_ITERATIONS}")
    if args.streams > MAX_STREAMS:
        p.error(f"--streams {args.streams} exceeds {MAX_STREAMS}")
    if not args.self_test and not args.model:
        p.error("--model is required unless --self-test is given")
    if args.model and not os.path.isfile(args.model):
        p.error(f"model file '{args.model}' does not exist")
    return args


def base_record(args: argparse.Namespace) -> dict:
    return {
        "runtime": args.runtime,
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "streams": args.streams,
        "seed": args.seed,
    }


def load(args: argparse.Namespace) -> tuple[Peer, dict]:
    import numpy as np

    try:
        model_info = inspect_model(args.model)
    except PeerFailure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PeerFailure("inspect", f"Cannot read ONNX model '{args.model}': {exc}") from exc
    feeds = make_feeds(model_info, args.batch, args.seq, args.seed)
    t0 = time.perf_counter()
    try:
        peer = PEERS[args.runtime](args, model_info, feeds)
    except PeerFailure:
        raise
    except ImportError as exc:
        raise PeerFailure("import", f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise PeerFailure("load", f"{type(exc).__name__}: {exc}") from exc
    load_ms = (time.perf_counter() - t0) * 1000.0
    peer.versions.update(
        {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnx": _version("onnx"),
        }
    )
    info = {
        **base_record(args),
        "versions": peer.versions,
        "config": peer.config,
        "model": model_info,
        "input_ids_sum": int(lcg_input_ids(args.batch, args.seq, args.seed).sum()),
        "load_ms": load_ms,
    }
    return peer, info


def serve(peer: Peer, info: dict) -> int:
    emit({"ok": True, "event": "ready", **info})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise ValueError("a command must be a JSON object")
            kind = cmd.get("cmd")
            if kind == "quit":
                emit({"ok": True, "event": "bye"})
                return 0
            if kind == "info":
                emit({"ok": True, "event": "ready", **info})
                continue
            if kind != "run":
                raise ValueError(f"unknown command '{kind}', expected run, info or quit")
            iterations = cmd.get("iterations")
            seconds = cmd.get("seconds")
            warmup = cmd.get("warmup", 0)
            if (iterations is None) == (seconds is None):
                raise ValueError("a run command needs exactly one of iterations or seconds")
            if iterations is not None and (
                not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS
            ):
                raise ValueError(f"iterations must be an integer in [1, {MAX_ITERATIONS}], "
                                 f"got '{iterations}'")
            if seconds is not None and (
                not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600
            ):
                raise ValueError(f"seconds must be in (0, 3600], got '{seconds}'")
            if not isinstance(warmup, int) or not 0 <= warmup <= 10_000:
                raise ValueError(f"warmup must be an integer in [0, 10000], got '{warmup}'")
            settle_ms = cmd.get("settle_ms", 0)
            if not isinstance(settle_ms, (int, float)) or not 0 <= settle_ms <= 10_000:
                raise ValueError(f"settle_ms must be in [0, 10000], got '{settle_ms}'")
            if settle_ms:
                time.sleep(settle_ms / 1000.0)
            result = measure(peer, iterations, seconds, warmup)
            emit({"ok": True, "event": "result", **base_record(peer.args), **result})
        except PeerFailure as exc:
            emit({"ok": False, "event": "error", "stage": exc.stage, "error": str(exc)})
        except (ValueError, TypeError) as exc:
            emit({"ok": False, "event": "error", "stage": "command", "error": str(exc)})
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    claim_stdout()
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    tmp = None
    try:
        if args.self_test:
            tmp = tempfile.TemporaryDirectory(prefix="peer_self_test_")
            args.model = write_self_test_model(tmp.name)
        peer, info = load(args)
        if args.serve:
            return serve(peer, info)
        result = measure(peer, args.iterations, args.seconds, args.warmup)
        emit({"ok": True, "event": "result", **info, **result})
        return 0
    except PeerFailure as exc:
        traceback.print_exc(file=sys.stderr)
        emit({"ok": False, "event": "error", **base_record(args), "stage": exc.stage,
              "error": str(exc)})
        return 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
