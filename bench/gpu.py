"""GPU benchmarks (run on the device machine; see bench/README.md for the exact commands).

    python bench/gpu.py trt-builds --models svd-unet,wan-dit --size small
        TensorRT(-RTX) engine builds per zoo model: parse/build success, build time, layer count.
    python bench/gpu.py table --model svd-unet:full --frames 14 --height 72 --width 128 \
            --targets ort-cuda-fp16,tvm-cuda-fp16 --torch eager,compile
        Latency per evaluation (median), % of the fp16 peak from vidcc's FLOP count, peak device memory,
        cosine vs fp32 (torch fp32 on the GPU, TF32 off: a CPU reference of a 45 TFLOP model would take
        minutes), beside torch eager and torch.compile on the same model and inputs. Targets compile with
        static shapes (one shape per evaluation, as torch.compile and TensorRT engines do) unless --dynamic.

    python bench/gpu.py ort-profile --model svd-unet:small --frames 14 --height 72 --width 128 \
            --target ort-cuda-fp16 --variants '{"nhwc": {"prefer_nhwc": "1"}}'
        The target's compiled graph under CUDA-EP option variants (median each, one process), and the
        profile of the first: time per op type and provider, nodes the CUDA EP did not take.

Results go to bench/results/gpu-*.json (and --out-dir, for copying back from the device machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402

H100_FP16_PEAK_TFLOPS = 989.0  # dense fp16 tensor-core peak (H100 SXM / H200)


def _save(name: str, data: dict, out_dir: str | None) -> None:
    path = write_result(name, data)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out_dir) / path.name)
    print(json.dumps(data, indent=1, default=str)[:4000])


def trt_builds(args) -> None:
    from vidcc import onnx_io, plugins, zoo
    from vidcc.pass_manager import PassContext, run_pipeline
    from vidcc.target import BuildContext

    rows, static = [], zoo.parse_static(args.static) or None
    for name in args.models.split(","):
        spec = f"{name}:{args.size}"
        try:
            exp = zoo.export(spec, static=static)
        except Exception as exc:  # e.g. an exporter this machine's torch lacks
            rows.append({"model": spec, "ok": False, "error": f"export: {str(exc).splitlines()[0][:300]}"})
            print(rows[-1], flush=True)
            continue
        with np.load(exp.inputs_path) as data:
            feeds = {k: data[k] for k in data.files}
        for tname in args.targets.split(","):
            target = plugins.registry().targets[tname].obj
            row = {"model": spec, "target": tname}
            t0 = time.perf_counter()
            try:
                graph = onnx_io.load(exp.model_path)
                run_pipeline(graph, target.default_pipeline, PassContext(target=target, calibration=[feeds]))
                work = Path(args.work) / f"{name}-{tname}"
                work.mkdir(parents=True, exist_ok=True)
                model = onnx_io.save(graph, work / "model.onnx")
                row["passes_s"] = round(time.perf_counter() - t0, 2)
                entries = target.build(model, work, BuildContext(feeds=feeds, work_dir=work))
                row.update(ok=True, build_s=entries["engine_build_seconds"], layers=entries["layers"],
                           engine_mib=round(entries["engine_bytes"] / 2**20, 1), flavour=entries["flavour"])
                try:
                    target.load(work, {"build": entries}).run(feeds)
                    row["runs"] = "yes"
                except Exception as exc:  # TensorRT-RTX refuses to run on compute capability 9.0
                    row["runs"] = f"no: {str(exc).splitlines()[0][:200]}"
                shutil.rmtree(work, ignore_errors=True)
            except Exception as exc:
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            rows.append(row)
            print(row, flush=True)
    _save(args.name or f"gpu-trt-builds-{args.size}", {"size": args.size, "static_export": static, "rows": rows,
                                                             "device": _device()}, args.out_dir)


def _static_export(args) -> dict[str, int] | None:
    """--static-export: frames/height/width fixed in the export itself, at --frames/--height/--width (a torch
    that cannot export a model with them dynamic, e.g. Wan on torch 2.11); the zoo's sample inputs are then
    built at this shape."""
    return {"frames": args.frames, "height": args.height, "width": args.width} if args.static_export else None


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:
        return "?"


def _feeds_at(exp, frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    """The zoo's sample inputs with frames/height/width (latent sizes) replaced, seeded."""
    from vidcc.verification import input_signature

    sig = input_signature(exp.model_path)
    with np.load(exp.inputs_path) as data:
        sample = {k: data[k] for k in data.files}
    dims = {"frames": frames, "height": height, "width": width}
    rng = np.random.default_rng(0)
    feeds = {}
    for name, info in sig.items():
        shape = [dims.get(d, sample[name].shape[i]) if isinstance(d, str) or d is None else d
                 for i, d in enumerate(info["shape"])]
        if list(shape) == list(sample[name].shape):
            feeds[name] = sample[name]
        else:
            feeds[name] = rng.standard_normal(shape).astype(sample[name].dtype)
    return feeds


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def table(args) -> None:
    import torch

    from vidcc import onnx_io, stats, zoo
    from vidcc.measure import time_fn
    from vidcc.zoo import models as zmodels
    from vidcc.zoo.entries import ENTRIES

    exp = zoo.export(args.model, static=_static_export(args))
    feeds = _feeds_at(exp, args.frames, args.height, args.width)
    graph = onnx_io.load(exp.model_path)
    flops = stats.summarize(stats.bind_input_shapes(graph, feeds))["flops"]
    del graph
    name, size = args.model.split(":")
    built = zmodels.build(ENTRIES[name], size)
    module = built.module.eval().cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tfeeds = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    with torch.no_grad():
        ref = module(**tfeeds)
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).float().cpu().numpy()
    rows = []

    def add(label, median_ms, cos, peak_mib, extra=None):
        rows.append({"target": label, "median_ms": round(median_ms, 2), "cosine_vs_fp32": round(cos, 6),
                     "pct_fp16_peak": round(100 * flops / (median_ms * 1e-3) / (H100_FP16_PEAK_TFLOPS * 1e12), 1),
                     "peak_device_mib": peak_mib, **(extra or {})})
        print(rows[-1], flush=True)

    half = module.half()
    hfeeds = {k: (v.half() if v.is_floating_point() else v) for k, v in tfeeds.items()}
    for mode in [m for m in args.torch.split(",") if m]:
        fn = half if mode == "eager" else torch.compile(half)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            t0 = time.perf_counter()
            out = fn(**hfeeds)
            first_s = time.perf_counter() - t0

            def step():
                fn(**hfeeds)
                torch.cuda.synchronize()

            timing = time_fn(step, runs=args.repeat, warmup=2)
        out = (out[0] if isinstance(out, (tuple, list)) else out).float().cpu().numpy()
        add(f"torch-{mode}", timing.median_ms, _cosine(out, ref), round(torch.cuda.max_memory_allocated() / 2**20),
            {"first_call_s": round(first_s, 1)})
    del half, module
    torch.cuda.empty_cache()

    from vidcc.compare import compare

    targets = [t for t in args.targets.split(",") if t]
    report = {"rows": []} if not targets else compare(exp.model_path.as_posix(), targets, inputs=feeds,
                     repeat=args.repeat, static_shapes=not args.dynamic, reference={"out_sample" if "out_sample" in built.output_names else built.output_names[0]: ref})
    for r in report["rows"]:
        if r.get("latency_median_ms") is None:
            rows.append({"target": r["target"], "error": r.get("error") or r.get("reason")})
            print(rows[-1], flush=True)
            continue
        add(r["target"], r["latency_median_ms"], r["cosine"], r["peak_device_mib"], {"build_s": r["build_s"]})
    _save(f"gpu-table-{name}-{size}", {"model": args.model, "latent": [args.frames, args.height, args.width],
                                        "static_export": exp.static or None, "flops": flops, "device": _device(),
                                        "reference": "torch fp32 on the GPU (TF32 off)",
                                        "rows": rows}, args.out_dir)


def _bound_step(sess, feeds: dict, out_like: dict, device: str, cuda_graph: bool):
    """One run with inputs and outputs on the device (IO binding): what a pipeline calling the model in
    a loop pays. With a CUDA graph the outputs are fixed buffers (a replay writes to the captured ones)."""
    import onnxruntime as ort

    binding = sess.io_binding()
    dev = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device, 0) for k, v in feeds.items()}
    for k, v in dev.items():
        binding.bind_ortvalue_input(k, v)
    for name, like in out_like.items():
        if cuda_graph:
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_shape_and_type(like.shape, like.dtype, device, 0))
        else:
            binding.bind_output(name, device)

    def step():
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    step.keep = (binding, dev)  # the bound buffers live as long as the step
    return step


def ort_profile(args) -> None:
    import collections

    import onnxruntime as ort

    from vidcc.compile import compile_model
    from vidcc.measure import time_fn

    from vidcc import zoo

    exp = zoo.export(args.model, static=_static_export(args))
    exp_feeds = _feeds_at(exp, args.frames, args.height, args.width)
    if args.pipeline:  # instead of the target's default, for A/B runs of its passes
        from vidcc import plugins

        plugins.registry().targets[args.target].obj.default_pipeline = args.pipeline
    result = compile_model(exp.model_path.as_posix(), args.target, inputs=exp_feeds, gate="lossy",
                           static_shapes=not args.dynamic)
    model_path = result.artifact.path / "model.onnx"
    base = dict(result.manifest["build"]["settings"].get("cuda_options", {}))
    on_gpu = result.manifest["build"]["settings"]["provider"] == "CUDAExecutionProvider"
    device = "cuda" if on_gpu else "cpu"
    variants = {"base": {}, **json.loads(args.variants)}
    rows, profile = [], None
    for label, extra in variants.items():
        opts = {**base, **extra}
        cuda_graph = opts.get("enable_cuda_graph") == "1"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if label == "base":
            so.enable_profiling = True
            so.profile_file_prefix = f"/tmp/ortprof-{args.target}"
        providers = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(str(model_path), so, providers=providers)
        if label == "base":
            out_like = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, exp_feeds)))
        step = _bound_step(sess, exp_feeds, out_like, device, cuda_graph)
        try:
            timing = time_fn(step, runs=args.repeat, warmup=3)
            rows.append({"variant": label, "options": opts, "median_ms": round(timing.median_ms, 2)})
        except Exception as exc:
            rows.append({"variant": label, "options": opts, "error": str(exc).splitlines()[0][:300]})
        print(rows[-1], flush=True)
        if label == "base":
            profile = _summarize_profile(sess.end_profiling(), args.top)
            if args.kernels:
                nograph = {k: v for k, v in opts.items() if k != "enable_cuda_graph"}
                profile["gpu_kernels"] = _kernel_times(ort.InferenceSession(str(model_path), providers=[
                    ("CUDAExecutionProvider", nograph)]), exp_feeds, out_like, device, args.top)
        del sess, step
    import onnx

    nodes = collections.Counter(n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node)
    _save(args.name or f"gpu-ort-profile-{args.model.replace(':', '-')}-{args.target}",
          {"model": args.model, "target": args.target, "pipeline": args.pipeline or "default", "latent": [args.frames, args.height, args.width],
           "device": _device(), "variants": rows, "profile": profile, "op_counts": dict(nodes.most_common())}, args.out_dir)


def _one_op_model(nodes, inputs: dict, output: str, inits=(), opset: int = 23):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "op", [helper.make_tensor_value_info(k, TensorProto.FLOAT16, v) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT16, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10)


def _attention_forms(B: int, S: int, C: int, heads: int) -> dict:
    """The forms vidcc can emit for one attention block over q, k, v [B, S, C] (fp16)."""
    from onnx import helper, numpy_helper

    D = C // heads
    qkv = {n: [B, S, C] for n in "qkv"}
    mk = helper.make_node
    forms = {"MultiHeadAttention": _one_op_model([mk("MultiHeadAttention", list("qkv"), ["y"], domain="com.microsoft",
                                                    num_heads=heads)], qkv, "y"),
             "Attention-23": _one_op_model([mk("Attention", list("qkv"), ["y"], q_num_heads=heads, kv_num_heads=heads)],
                                           qkv, "y")}
    inits = [numpy_helper.from_array(np.array([B, S, heads, D], np.int64), "split"),
             numpy_helper.from_array(np.array([B, S, C], np.int64), "merge"),
             numpy_helper.from_array(np.array(D ** -0.5, np.float16), "scale")]
    nodes = [mk("Reshape", ["q", "split"], ["q4"]), mk("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
             mk("Reshape", ["k", "split"], ["k4"]), mk("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
             mk("Reshape", ["v", "split"], ["v4"]), mk("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
             mk("MatMul", ["qh", "kt"], ["s"]), mk("Mul", ["s", "scale"], ["ss"]), mk("Softmax", ["ss"], ["p"], axis=-1),
             mk("MatMul", ["p", "vh"], ["o"]), mk("Transpose", ["o"], ["om"], perm=[0, 2, 1, 3]),
             mk("Reshape", ["om", "merge"], ["y"])]
    forms["unfused"] = _one_op_model(nodes, qkv, "y", inits)
    return forms


def _conv_forms(N: int, C: int, H: int, W: int) -> dict:
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((C, C, 3, 3)).astype(np.float16) * 0.05
    mk = helper.make_node
    return {"Conv": _one_op_model([mk("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"x": [N, C, H, W]}, "y",
                                  [numpy_helper.from_array(w, "w")]),
            "NhwcConv": _one_op_model([mk("NhwcConv", ["x", "w"], ["y"], domain="com.microsoft", pads=[1, 1, 1, 1])],
                                      {"x": [N, H, W, C]}, "y", [numpy_helper.from_array(w.transpose(0, 2, 3, 1).copy(), "w")])}


def _torch_conv(N: int, C: int, H: int, W: int, flops: float, repeat: int) -> dict:
    import torch

    from vidcc.measure import time_fn

    torch.backends.cudnn.benchmark = True
    x = torch.randn(N, C, H, W, device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).cuda().half().to(memory_format=torch.channels_last)

    def step():
        with torch.no_grad():
            conv(x)
        torch.cuda.synchronize()

    t = time_fn(step, runs=repeat, warmup=3)
    return {"median_ms": round(t.median_ms, 3), "tflops": round(flops / t.median_ms / 1e9, 1)}


def ops(args) -> None:
    """Single ops at the model's shapes, each alone in a session (CUDA graph, IO binding): which form of
    an attention block or convolution the CUDA EP runs fastest. Per-node times from ORT's profiler are
    host-side launch times on the CUDA EP, not kernel times, so they cannot answer this."""
    import onnxruntime as ort

    from vidcc.measure import time_fn

    base = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": "1"}
    variants = {"": {}, **json.loads(args.variants)}
    rows = []
    rng = np.random.default_rng(0)
    for level, C in enumerate(int(c) for c in args.channels.split(",")):
        h, w = args.height >> level, args.width >> level
        cases = {f"spatial attention L{level}": (_attention_forms(args.frames, h * w, C, C // 64),
                                                  4 * args.frames * (h * w) ** 2 * C),
                 f"temporal attention L{level}": (_attention_forms(h * w, args.frames, C, C // 64),
                                                   4 * h * w * args.frames ** 2 * C),
                 f"conv3x3 L{level}": (_conv_forms(args.frames, C, h, w), 2 * 9 * C * C * args.frames * h * w)}
        for case, (forms, flops) in cases.items():
            if args.case and args.case != case:
                continue
            for form, model in forms.items():
                for vlabel, extra in variants.items():
                    row = {"case": case, "form": form + (f" {vlabel}" if vlabel else ""), "gflop": round(flops / 1e9, 2)}
                    try:
                        sess = ort.InferenceSession(model.SerializeToString(), providers=[("CUDAExecutionProvider", {**base, **extra})])
                        feeds = {i.name: rng.standard_normal(i.shape).astype(np.float16) for i in sess.get_inputs()}
                        out_like = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
                        t = time_fn(_bound_step(sess, feeds, out_like, "cuda", True), runs=args.repeat, warmup=3)
                        row.update(median_ms=round(t.median_ms, 3), tflops=round(flops / t.median_ms / 1e9, 1))
                    except Exception as exc:
                        row["error"] = str(exc).strip().splitlines()[0][:200]
                    rows.append(row)
                    print(row, flush=True)
            if case.startswith("conv"):  # what cuDNN reaches on the same conv through torch (channels-last)
                rows.append({"case": case, "form": "torch channels_last", "gflop": round(flops / 1e9, 2),
                             **_torch_conv(args.frames, C, h, w, flops, args.repeat)})
                print(rows[-1], flush=True)
    _save(args.name, {"latent": [args.frames, args.height, args.width], "channels": args.channels,
                      "device": _device(), "rows": rows}, args.out_dir)


def _kernel_times(sess, feeds: dict, out_like: dict, device: str, top: int) -> dict:
    """GPU time per kernel of one run, read with torch's profiler (CUPTI sees every kernel in the process,
    ORT's included). ORT's own profiler times nodes on the host: launches, not kernels. The session
    replays no CUDA graph."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile

    step = _bound_step(sess, feeds, out_like, device, False)
    step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
    by_kernel = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            by_kernel[e.name[:90]] += e.device_time_total / 1e3
    total = sum(by_kernel.values())
    return {"total_ms": round(total, 2), "top": {k: round(v, 3) for k, v in by_kernel.most_common(top)}}


def _summarize_profile(path: str, top: int) -> dict:
    """ORT's chrome-trace profile -> ms per (op type, provider) per run, and the slowest nodes."""
    import collections

    trace = json.loads(Path(path).read_text())
    events = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = max(1, sum(1 for e in trace if e.get("name") == "model_run"))
    by_op, by_node = collections.Counter(), collections.Counter()
    providers = collections.Counter()
    for e in events:
        a = e.get("args", {})
        key = f"{a.get('op_name', '?')}@{a.get('provider', '?').replace('ExecutionProvider', '')}"
        by_op[key] += e["dur"] / 1e3 / runs
        by_node[f"{e['name'][:-12]} ({a.get('op_name')})"] += e["dur"] / 1e3 / runs
        providers[a.get("provider", "?")] += 1
    return {"runs": runs, "total_kernel_ms": round(sum(by_op.values()), 2),
            "by_op_ms": {k: round(v, 2) for k, v in by_op.most_common(top)},
            "slowest_nodes_ms": {k: round(v, 3) for k, v in by_node.most_common(top)},
            "kernel_events_per_provider": dict(providers)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("trt-builds")
    a.add_argument("--models", default="svd-unet,animatediff-unet,wan-dit,wan22-moe,moe-dit,moe-dit-trouter")
    a.add_argument("--size", default="small")
    a.add_argument("--targets", default="trt-fp16,trt-bf16")
    a.add_argument("--work", default="/tmp/vidcc-trt")
    a.add_argument("--static", metavar="DIM=N,...", help="export with these latent dims static, as `vidcc zoo export "
                   "--static` (e.g. frames=5,height=60,width=104: a torch that exports Wan only with static dims)")
    a.add_argument("--name", help="result name (default gpu-trt-builds-SIZE)")
    a.add_argument("--out-dir")
    a.set_defaults(func=trt_builds)
    b = sub.add_parser("table")
    b.add_argument("--model", default="svd-unet:full")
    b.add_argument("--frames", type=int, default=14)
    b.add_argument("--height", type=int, default=72)
    b.add_argument("--width", type=int, default=128)
    b.add_argument("--targets", default="ort-cuda-fp16,tvm-cuda-fp16")
    b.add_argument("--torch", default="eager,compile")
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--dynamic", action="store_true", help="compile for dynamic shapes (default: --static-shapes)")
    b.add_argument("--static-export", action="store_true",
                   help="export the zoo model with frames/height/width static at --frames/--height/--width "
                        "(no dynamic dims in the graph; for a torch whose torch.export fails on the dynamic ones)")
    b.add_argument("--out-dir")
    b.set_defaults(func=table)
    c = sub.add_parser("ort-profile")
    c.add_argument("--model", default="svd-unet:small")
    c.add_argument("--frames", type=int, default=14)
    c.add_argument("--height", type=int, default=72)
    c.add_argument("--width", type=int, default=128)
    c.add_argument("--target", default="ort-cuda-fp16")
    c.add_argument("--variants", default="{}", help="JSON: label -> extra CUDA EP options")
    c.add_argument("--repeat", type=int, default=10)
    c.add_argument("--dynamic", action="store_true", help="compile for dynamic shapes (default: --static-shapes)")
    c.add_argument("--top", type=int, default=25)
    c.add_argument("--pipeline", default="", help="pass pipeline instead of the target's default")
    c.add_argument("--static-export", action="store_true", help="as table's --static-export")
    c.add_argument("--kernels", action="store_true", help="also GPU time per kernel (torch's profiler; base variant)")
    c.add_argument("--name", help="result name (default gpu-ort-profile-MODEL-TARGET)")
    c.add_argument("--out-dir")
    c.set_defaults(func=ort_profile)
    d = sub.add_parser("ops", help="attention forms and convolutions alone, at the model's shapes")
    d.add_argument("--frames", type=int, default=14)
    d.add_argument("--height", type=int, default=72)
    d.add_argument("--width", type=int, default=128)
    d.add_argument("--channels", default="320,640,1280", help="channels per UNet level (head size 64)")
    d.add_argument("--variants", default="{}", help="JSON: label -> extra CUDA EP options for the attention forms")
    d.add_argument("--repeat", type=int, default=20)
    d.add_argument("--case", default="", help="only this case (e.g. 'temporal attention L0'): a failed kernel can leave "
                   "the CUDA context unusable for the rest of the process")
    d.add_argument("--name", default="gpu-ops-svd-unet-full")
    d.add_argument("--out-dir")
    d.set_defaults(func=ops)
    args = p.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
