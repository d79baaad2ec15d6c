"""Inference speed and memory: tiles per second, the network / post-processing split, and the peak
memory of predicting and exporting an 8192×8192 image.

Usage::

    python benchmarks/predict.py [--sections cpu,profile,throughput,overlap,exports,memory] [--tiles 6]
                                 [--memory-size 8192] [--memory-method model|classical] [--device cpu]
                                 [--compile] [--postprocess-workers 0,1,2] [--repeats 3]

- ``cpu``: today's path against the faster ones, in one run on the same bundled tiles at input 512
  (NucleiSam, instance head, random weights with a non-zero LoRA update, one tile per call, the
  paths taking turns tile by tile so that a busy machine slows each alike): *today* = the model as
  trained (LoRA unmerged) in fp32 eager PyTorch, as ``map_batch`` ran it before the inference copy;
  *torch* = the inference copy :func:`~nucleisam.model.inference.tile_map_fn` now runs; *onnxruntime*
  = the file ``nucleisam export`` writes, in ONNX Runtime (``predict --backend onnxruntime``);
  with ``--compile`` also ``torch.compile`` of the inference copy (compile time reported). Every path's
  maps are checked against today's (within 1e-4); prints network s/tile, GFLOP/s (FLOPs counted with
  ``torch.utils.flop_counter``), post-processing s/tile and end-to-end tiles/s, and the speed-up.
- ``profile``: where one 512 forward of the inference copy spends its time, part by part (CPU time
  of one thread, FLOPs and GFLOP/s per part).
- ``throughput``: the bundled 512×512 sample tiles, one tile each, through a randomly initialised
  NucleiSam (instance head) built for input 512 and 1024, post-processing included. Random weights
  give the network's real cost but meaningless maps, so the post-processing is also timed on
  realistic maps (the training targets of the true labels); tiles/s is reported for both. The
  classical baseline's tiles/s is the reference.
- ``overlap``: tiles/s end to end through :class:`~nucleisam.predict.predictor.Predictor` (network,
  post-processing, stitching) with 0, 1, 2 ... post-processing threads (``--postprocess-workers``),
  on a mosaic of ``--copies`` rows of the bundled 512² tiles, cut back into exactly those tiles
  (overlap 0, batches of 4).
  The network is a randomly initialised NucleiSam at input 512 on ``--device``, whose maps are
  then replaced by realistic ones (the training targets of the true labels), so the network costs what
  it costs and the post-processing what it does on real maps. Also *maps given* (no network: the
  post-processing bound, what a fast GPU leaves) and the classical baseline. Each setting runs
  ``--repeats`` times in turns; the table gives the median and the range.
- ``exports``: all four exports of an 8192×8192 image tiled from a sample tile and its true labels
  (≈ 48,600 nuclei), in a fresh process: seconds and peak resident memory.
- ``memory``: ``nucleisam predict``'s whole path (tiled prediction + exports) on the same 8192×8192
  image in a fresh process: peak resident memory (the goal: under 4 GB on CPU).

Prints tables and writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.data import read_label_map, read_rgb  # noqa: E402
from nucleisam.exports import export_all  # noqa: E402

SAMPLE = REPO / "examples" / "NuInsSeg" / "human spleen"
BIG_SOURCE = "human_spleen_25"  # the sample tile with the most nuclei (190)


def sample_tiles(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    stems = sorted(path.stem for path in (SAMPLE / "tissue images").glob("*.png"))[:count]
    return [(read_rgb(SAMPLE / "tissue images" / f"{stem}.png"),
             read_label_map(SAMPLE / "label masks modify" / f"{stem}.tif")) for stem in stems]


def big_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size×size image tiled from one sample tile, and its labels with distinct ids per copy."""
    image = read_rgb(SAMPLE / "tissue images" / f"{BIG_SOURCE}.png")
    labels = read_label_map(SAMPLE / "label masks modify" / f"{BIG_SOURCE}.tif")
    reps = -(-size // image.shape[0])
    big = np.tile(image, (reps, reps, 1))[:size, :size]
    per_copy = int(labels.max())
    offsets = np.arange(reps * reps, dtype=np.int32).reshape(reps, reps) * per_copy
    tiled = np.tile(labels.astype(np.int32), (reps, reps))
    big_labels = np.where(tiled > 0, tiled + np.kron(offsets, np.ones(labels.shape, np.int32)), 0)
    return np.ascontiguousarray(big), np.ascontiguousarray(big_labels[:size, :size])


def throughput(count: int, device: str) -> list[dict]:
    import torch

    from nucleisam.config import ModelConfig, PostprocessConfig
    from nucleisam.data import instance_targets
    from nucleisam.model import build_model
    from nucleisam.postprocess import instances_from_maps
    from nucleisam.predict.predictor import Predictor

    tiles = sample_tiles(count)
    config = PostprocessConfig()
    realistic = [{name: np.asarray(value, np.float32) for name, value in instance_targets(labels).items()}
                 for _, labels in tiles]
    start = time.perf_counter()
    for maps in realistic:
        instances_from_maps(maps, config)
    post_realistic = (time.perf_counter() - start) / len(tiles)

    rows = []
    for input_size in (512, 1024):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-initialisation warning: intended here
            model = build_model(ModelConfig(input_size=input_size, weights="none"))
        predictor = Predictor.from_model(model, postprocess=config, device=device, tile=512, batch_size=1)
        predictor.predict(tiles[0][0])  # warm-up (allocator, kernels)
        network = post = total = 0.0
        for image, _ in tiles:
            result = predictor.predict(image)
            network += result.network_seconds
            post += result.postprocess_seconds
            total += result.seconds
        per_tile = network / len(tiles)
        rows.append({
            "method": f"NucleiSam input {input_size} ({device}, {torch.get_num_threads()} threads)",
            "network_s_per_tile": per_tile,
            "postprocess_s_per_tile_random_maps": post / len(tiles),
            "postprocess_s_per_tile_realistic_maps": post_realistic,
            "tiles_per_s_end_to_end_random_maps": len(tiles) / total,
            "tiles_per_s_realistic": 1.0 / (per_tile + post_realistic),
            "network_share_realistic": per_tile / (per_tile + post_realistic),
        })

    classical = Predictor.classical(tile=512)
    classical.predict(tiles[0][0])
    start = time.perf_counter()
    for image, _ in tiles:
        classical.predict(image)
    seconds = (time.perf_counter() - start) / len(tiles)
    rows.append({"method": "classical baseline", "network_s_per_tile": 0.0,
                 "postprocess_s_per_tile_realistic_maps": seconds, "tiles_per_s_realistic": 1.0 / seconds,
                 "network_share_realistic": 0.0})
    return rows


def overlap(count: int, copies: int, device: str, workers: list[int], repeats: int,
            batch_size: int = 4) -> dict:
    import torch

    from nucleisam.config import ModelConfig, PostprocessConfig
    from nucleisam.data import instance_targets
    from nucleisam.model import build_model
    from nucleisam.model.inference import resolve_device, tile_map_fn
    from nucleisam.postprocess import instances_from_maps
    from nucleisam.predict.predictor import Predictor

    tiles = sample_tiles(count)
    # The sample tiles side by side, ``copies`` rows of them: grid tile i is sample tile i % count.
    row = np.concatenate([image for image, _ in tiles], axis=1)
    mosaic = np.ascontiguousarray(np.tile(row, (copies, 1, 1)))
    realistic = [{name: np.asarray(value, np.float32) for name, value in instance_targets(labels).items()}
                 for _, labels in tiles]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-initialisation warning: intended here
        model = build_model(ModelConfig(input_size=512, weights="none"))
    network = tile_map_fn(model, resolve_device(device))

    def given_maps(run_network: bool):
        """A map_fn returning the realistic maps of the tiles in grid order (the network run first)."""
        position = [0]

        def map_fn(batch: np.ndarray) -> dict[str, np.ndarray]:
            if run_network:
                network(batch)
            chosen = [realistic[(position[0] + slot) % count] for slot in range(len(batch))]
            position[0] += len(batch)
            return {name: np.stack([maps[name] for maps in chosen]) for name in chosen[0]}

        return map_fn

    config = PostprocessConfig()

    def label_fn(maps, image: np.ndarray) -> np.ndarray:
        return instances_from_maps(dict(maps), config)

    methods = {
        f"NucleiSam input 512 ({device}, {torch.get_num_threads()} torch threads)":
            lambda w: Predictor(label_fn=label_fn, map_fn=given_maps(True), tile=512, overlap=0,
                                batch_size=batch_size, postprocess_workers=w),
        "maps given (no network: post-processing bound)":
            lambda w: Predictor(label_fn=label_fn, map_fn=given_maps(False), tile=512, overlap=0,
                                batch_size=batch_size, postprocess_workers=w),
        "classical baseline": lambda w: Predictor.classical(tile=512, overlap=0, postprocess_workers=w),
    }
    seconds: dict[tuple[str, int], list[float]] = {}
    reference: dict[str, np.ndarray] = {}
    for name, make in methods.items():
        make(0).predict(mosaic)  # warm-up (allocator, kernels)
        for _ in range(repeats):
            for count_workers in workers:  # in turns, so a busy machine slows every setting alike
                result = make(count_workers).predict(mosaic)
                assert result.n_tiles == count * copies
                seconds.setdefault((name, count_workers), []).append(result.seconds)
                # Every setting gives the serial path's labels exactly.
                assert np.array_equal(reference.setdefault(name, result.labels), result.labels), name
    rows = []
    for (name, count_workers), times in seconds.items():
        rates = sorted(count * copies / t for t in times)
        rows.append({"method": name, "postprocess_workers": count_workers, "tiles": count * copies,
                     "tiles_per_s_median": float(np.median(rates)), "tiles_per_s_min": rates[0],
                     "tiles_per_s_max": rates[-1], "seconds": times})
    return {"tiles": count * copies, "batch_size": batch_size, "repeats": repeats, "rows": rows}


def random_lora_model(input_size: int):
    """NucleiSam (instance head) with random weights and a non-zero LoRA update (as after training)."""
    import torch

    from nucleisam.config import ModelConfig
    from nucleisam.model.network import assemble_model

    torch.manual_seed(0)
    model = assemble_model(ModelConfig(input_size=input_size, weights="none"), state_dict=None,
                           base_checkpoint_sha256="random")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0.0, 0.02)
    return model.eval()


def forward_gflop(model, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def cpu_paths(count: int, compile_model: bool, threads: int) -> dict:
    import torch

    from nucleisam.config import PostprocessConfig
    from nucleisam.model.export import export_model
    from nucleisam.model.inference import tile_map_fn
    from nucleisam.model.onnx_runtime import OnnxMapFn
    from nucleisam.postprocess import instances_from_maps

    if threads:
        torch.set_num_threads(threads)
    size = 512
    model = random_lora_model(size)
    tiles = [image[None] for image, _ in sample_tiles(count)]
    gflop = forward_gflop(model, size)

    def today(batch: np.ndarray) -> dict:  # map_batch before the inference copy: the model as trained
        with torch.inference_mode():
            out = model(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).float())
        return {k: (torch.sigmoid(v) if k == "foreground" else v)[:, 0].numpy() for k, v in out.items()}

    paths = {"today (unmerged fp32 eager)": today,
             "torch (inference copy)": tile_map_fn(model, torch.device("cpu"))}
    setup = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_model(model, Path(tmp) / "model.onnx", "onnx")
        setup["onnxruntime (exported file)"] = time.perf_counter() - start
        paths["onnxruntime (exported file)"] = OnnxMapFn(Path(tmp) / "model.onnx", threads=threads or None)
    if compile_model:
        from nucleisam.model.prepared import prepare_for_inference

        compiled = torch.compile(prepare_for_inference(model))
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(torch.zeros(1, 3, size, size))
        setup["torch.compile (inference copy)"] = time.perf_counter() - start

        def run_compiled(batch: np.ndarray) -> dict:
            with torch.inference_mode():
                out = compiled(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).float())
            return {k: (torch.sigmoid(v) if k == "foreground" else v)[:, 0].numpy() for k, v in out.items()}

        paths["torch.compile (inference copy)"] = run_compiled

    reference = [today(tile) for tile in tiles]
    seconds = {name: 0.0 for name in paths}
    differences = {name: 0.0 for name in paths}
    for run in paths.values():
        run(tiles[0])  # warm-up: allocator, oneDNN kernel choice, ORT's first run
    for index, tile in enumerate(tiles):
        for name, run in paths.items():  # in turns, so a busy machine slows every path alike
            start = time.perf_counter()
            maps = run(tile)
            seconds[name] += time.perf_counter() - start
            differences[name] = max(differences[name],
                                    *(float(np.abs(maps[k] - reference[index][k]).max()) for k in maps))
    config = PostprocessConfig()
    start = time.perf_counter()
    for maps in reference:
        instances_from_maps({k: v[0] for k, v in maps.items()}, config)
    post = (time.perf_counter() - start) / len(tiles)
    base = seconds["today (unmerged fp32 eager)"] / len(tiles)
    rows = []
    for name, total in seconds.items():
        per_tile = total / len(tiles)
        assert differences[name] <= 1e-4, f"{name}: maps differ from today's by {differences[name]:.2e}"
        rows.append({"path": name, "network_s_per_tile": per_tile, "gflop_per_s": gflop / per_tile,
                     "postprocess_s_per_tile": post, "tiles_per_s": 1.0 / (per_tile + post),
                     "speedup_end_to_end": (base + post) / (per_tile + post),
                     "max_map_difference": differences[name], "setup_s": setup.get(name, 0.0)})
    return {"input_size": size, "tiles": len(tiles), "gflop_per_tile": gflop,
            "threads": threads or f"default (torch {torch.get_num_threads()})", "rows": rows}


def profile_parts() -> list[dict]:
    """CPU time (one thread) and FLOPs of each part of one 512 forward of the inference copy."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nucleisam.model.prepared import prepare_for_inference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of one thread: what each part costs, whatever else runs
    model = prepare_for_inference(random_lora_model(512))
    encoder, head = model.image_encoder, model.instance_head
    stage0 = encoder.layers[0]
    parts = {"patch embedding + stage 0 (MBConv)": [encoder.patch_embed, *stage0.blocks, stage0.downsample]}
    for stage in (1, 2, 3):
        blocks = encoder.layers[stage].blocks
        parts[f"stage {stage} window attention"] = [block.attn for block in blocks]
        parts[f"stage {stage} MLP"] = [block.mlp for block in blocks]
        # Whole blocks; their attention and MLP are taken off below.
        parts[f"stage {stage} local conv + glue"] = list(blocks)
        if encoder.layers[stage].downsample is not None:
            parts[f"stage {stage} patch merging"] = [encoder.layers[stage].downsample]
    parts["neck"] = [encoder.neck]
    parts["instance head"] = [head]
    spent: dict[str, float] = dict.fromkeys(parts, 0.0)
    started: dict[int, float] = {}
    for name, modules in parts.items():
        for module in modules:
            module.register_forward_pre_hook(lambda m, a: started.__setitem__(id(m), time.process_time()))
            module.register_forward_hook(lambda m, a, o, name=name: spent.__setitem__(
                name, spent[name] + time.process_time() - started[id(m)]))
    image = torch.from_numpy(sample_tiles(1)[0][0].transpose(2, 0, 1).copy())[None].float()
    names = {id(m): f"NucleiSam.{n}" for n, m in model.named_modules()}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(image)
        model(image)
        spent.update(dict.fromkeys(spent, 0.0))
        start = time.process_time()
        model(image)
        total = time.process_time() - start
    torch.set_num_threads(threads)
    flops = {key: sum(value.values()) / 1e9 for key, value in counter.get_flop_counts().items()}
    gflop = {name: sum(flops.get(names[id(m)], 0.0) for m in modules) for name, modules in parts.items()}
    for stage in (1, 2, 3):
        for kind in ("window attention", "MLP"):
            spent[f"stage {stage} local conv + glue"] -= spent[f"stage {stage} {kind}"]
            gflop[f"stage {stage} local conv + glue"] -= gflop[f"stage {stage} {kind}"]
    rows = [{"part": name, "seconds": spent[name], "share": spent[name] / total, "gflop": gflop[name],
             "gflop_per_s": gflop[name] / spent[name] if spent[name] else 0.0} for name in parts]
    rest = total - sum(spent.values())
    rows.append({"part": "rest (normalise, pad, crop, sigmoid, reshapes)", "seconds": rest,
                 "share": rest / total,
                 "gflop": flops["Global"] - sum(gflop.values()), "gflop_per_s": 0.0})
    rows.append({"part": "total", "seconds": total, "share": 1.0, "gflop": flops["Global"],
                 "gflop_per_s": flops["Global"] / total})
    return rows


def child(task: dict) -> dict:
    """Runs in a fresh interpreter so ru_maxrss is this task's peak alone."""
    image, labels = big_image(task["size"])
    out = Path(task["out"])
    start = time.perf_counter()
    if task["kind"] == "exports":
        prediction_seconds = 0.0
    else:
        from nucleisam.predict.predictor import Predictor

        if task["method"] == "classical":
            predictor = Predictor.classical(tile=512, overlap=64)
        else:
            from nucleisam.config import ModelConfig
            from nucleisam.model import build_model

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(ModelConfig(input_size=task["input_size"], weights="none"))
            predictor = Predictor.from_model(model, device=task["device"], tile=512, overlap=64, batch_size=4)
        del labels
        result = predictor.predict(image)
        labels = result.labels
        prediction_seconds = time.perf_counter() - start
    export_start = time.perf_counter()
    export_all(labels, image, out, "big", mpp=0.25, overwrite=True)
    return {
        "task": task["kind"], "method": task.get("method", ""), "size": task["size"],
        "nuclei": int(len(np.unique(labels)) - 1),
        "prediction_s": prediction_seconds, "export_s": time.perf_counter() - export_start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "geojson_mib": (out / "big_nuclei.geojson").stat().st_size / 2**20,
    }


def run_child(task: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        task = {**task, "out": tmp}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="cpu,profile,throughput,exports,memory")
    parser.add_argument("--compile", action="store_true", help="cpu section: also time torch.compile")
    parser.add_argument("--threads", type=int, default=0,
                        help="cpu section: torch and ONNX Runtime threads (default: each library's own)")
    parser.add_argument("--tiles", type=int, default=6, help="sample tiles for the throughput section")
    parser.add_argument("--memory-size", type=int, default=8192)
    parser.add_argument("--memory-method", choices=["model", "classical"], default="model")
    parser.add_argument("--input-size", type=int, default=512, help="model input for the memory section")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--postprocess-workers", default="0,1,2",
                        help="overlap section: comma-separated post-processing thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="overlap section: runs of each setting")
    parser.add_argument("--copies", type=int, default=4, help="overlap section: rows of sample tiles")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    sections = args.sections.split(",")
    report: dict = {"machine": platform.platform(), "processor": _processor(),
                    "python": platform.python_version(), "cpus": _cpus(), "date": time.strftime("%Y-%m-%d")}
    if "cpu" in sections:
        result = report["cpu"] = cpu_paths(args.tiles, args.compile, args.threads)
        print(f"\ncpu: {result['tiles']} sample tiles at input {result['input_size']}, one per call, "
              f"{result['gflop_per_tile']:.1f} GFLOP per tile, threads {result['threads']}")
        print(f"{'path':<32} {'net s/tile':>10} {'GFLOP/s':>8} {'post s/tile':>11} {'tiles/s':>8} "
              f"{'speed-up':>8} {'max diff':>9} {'setup s':>8}")
        for row in result["rows"]:
            print(f"{row['path']:<32} {row['network_s_per_tile']:>10.3f} {row['gflop_per_s']:>8.1f} "
                  f"{row['postprocess_s_per_tile']:>11.3f} {row['tiles_per_s']:>8.2f} "
                  f"{row['speedup_end_to_end']:>7.2f}x {row['max_map_difference']:>9.1e} "
                  f"{row['setup_s']:>8.1f}")
    if "profile" in sections:
        rows = report["profile"] = profile_parts()
        print("\nprofile: one 512 forward of the inference copy, CPU time of one thread")
        print(f"{'part':<48} {'ms':>7} {'share':>6} {'GFLOP':>6} {'GFLOP/s':>8}")
        for row in rows:
            print(f"{row['part']:<48} {1000 * row['seconds']:>7.0f} {row['share']:>6.0%} "
                  f"{row['gflop']:>6.2f} {row['gflop_per_s']:>8.1f}")
    if "throughput" in sections:
        rows = report["throughput"] = throughput(args.tiles, args.device)
        print(f"\nthroughput: {args.tiles} sample tiles of 512x512, one tile per image")
        print(f"{'method':<44} {'net s/tile':>10} {'post s/tile':>11} {'tiles/s':>8} {'net share':>9}")
        for row in rows:
            print(f"{row['method']:<44} {row['network_s_per_tile']:>10.3f} "
                  f"{row['postprocess_s_per_tile_realistic_maps']:>11.3f} "
                  f"{row['tiles_per_s_realistic']:>8.2f} {row['network_share_realistic']:>9.0%}")
    if "overlap" in sections:
        workers = [int(text) for text in args.postprocess_workers.split(",")]
        result = report["overlap"] = overlap(args.tiles, args.copies, args.device, workers, args.repeats)
        print(f"\noverlap: {result['tiles']} tiles of 512x512 ({args.copies} copies of {args.tiles} sample "
              f"tiles) as one mosaic, batches of "
              f"{result['batch_size']}, {result['repeats']} runs each (median, min-max)")
        print(f"{'method':<52} {'post workers':>12} {'tiles/s':>8} {'range':>15}")
        for row in result["rows"]:
            print(f"{row['method']:<52} {row['postprocess_workers']:>12} {row['tiles_per_s_median']:>8.2f} "
                  f"{row['tiles_per_s_min']:>7.2f}-{row['tiles_per_s_max']:<7.2f}")
    large = []
    if "exports" in sections:
        large.append(run_child({"kind": "exports", "size": args.memory_size}))
    if "memory" in sections:
        large.append(run_child({"kind": "predict", "size": args.memory_size, "method": args.memory_method,
                                "input_size": args.input_size, "device": args.device}))
    if large:
        report["large_image"] = large
        print(f"\n{args.memory_size}x{args.memory_size} image")
        print(f"{'task':<10} {'method':<10} {'nuclei':>8} {'predict s':>10} {'export s':>9} "
              f"{'peak RSS MiB':>12}")
        for row in large:
            print(f"{row['task']:<10} {row['method']:<10} {row['nuclei']:>8,} {row['prediction_s']:>10.1f} "
                  f"{row['export_s']:>9.1f} {row['peak_rss_mib']:>12.0f}")
    out = REPO / "benchmarks" / "results" / "predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
