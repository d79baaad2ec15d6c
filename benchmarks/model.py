"""Model speed and memory on this machine: seconds per image for inference and for a training step.

For every input size × mode × head, a fresh subprocess builds the model (random weights: speed does
not depend on them), times ``forward`` under ``torch.no_grad`` in eval mode, then forward + backward
in train mode, on 512 × 512 RGB tiles (NuInsSeg's size: at input 1024 they are upsampled, SAM's
convention; at 512 they run natively). Peak memory is the subprocess's maximum resident set size
(``ru_maxrss``) after each phase, so each figure includes the model and PyTorch itself.

    python benchmarks/model.py                       # all configurations, table + JSON
    python benchmarks/model.py --sizes 512 --heads instance --repeats 3

Writes ``benchmarks/results/model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "model.json"


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _worker(args: argparse.Namespace) -> dict:
    import torch

    from nucleisam.config import ModelConfig
    from nucleisam.model.network import assemble_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(mode=args.mode, head=args.head, input_size=args.size, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random")
    rss_model = _peak_rss_mib()
    images = torch.rand(args.batch, 3, args.tile, args.tile) * 255

    model.eval()
    with torch.no_grad():
        model(images)  # warm-up (allocator, oneDNN kernel selection)
        start = time.perf_counter()
        for _ in range(args.repeats):
            model(images)
        forward = (time.perf_counter() - start) / (args.repeats * args.batch)
    rss_forward = _peak_rss_mib()

    model.train()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    def step() -> None:
        outputs = model(images)
        loss = sum(value.float().mean() for value in outputs.values())
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(args.repeats):
        step()
    train = (time.perf_counter() - start) / (args.repeats * args.batch)
    rows = {row["part"]: row for row in model.parameter_table()}
    return {
        "input_size": args.size,
        "mode": args.mode,
        "head": args.head,
        "batch": args.batch,
        "tile": args.tile,
        "threads": torch.get_num_threads(),
        "trainable_parameters": rows["total"]["trainable"],
        "forward_s_per_image": round(forward, 4),
        "train_step_s_per_image": round(train, 4),
        "peak_rss_mib_model": round(rss_model, 1),
        "peak_rss_mib_forward": round(rss_forward, 1),
        "peak_rss_mib_train": round(_peak_rss_mib(), 1),
    }


def _configurations(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    return [
        (size, mode, head)
        for size in args.sizes
        for mode in args.modes
        for head in args.heads
        if not (mode == "seed" and head != "sam")  # seed is the SAM head by definition
    ]


def _table(rows: list[dict]) -> str:
    header = (
        f"{'size':>5} {'mode':<8} {'head':<9} {'trainable':>10} {'fwd s/img':>10} {'train s/img':>12} "
        f"{'RSS fwd MiB':>12} {'RSS train MiB':>14}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['input_size']:>5} {r['mode']:<8} {r['head']:<9} failed: {r['error']}")
            continue
        lines.append(
            f"{r['input_size']:>5} {r['mode']:<8} {r['head']:<9} {r['trainable_parameters']:>10,} "
            f"{r['forward_s_per_image']:>10.3f} {r['train_step_s_per_image']:>12.3f} "
            f"{r['peak_rss_mib_forward']:>12.0f} {r['peak_rss_mib_train']:>14.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from nucleisam.config import HEADS, MODES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--tile", type=int, default=512, help="side of the square input tiles (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--head", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    common = ["--batch", str(args.batch), "--tile", str(args.tile), "--repeats", str(args.repeats)]
    common += ["--threads", str(args.threads)]
    rows = []
    for size, mode, head in _configurations(args):
        command = [sys.executable, __file__, "--worker", "--size", str(size), "--mode", mode, "--head", head]
        done = subprocess.run(command + common, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"input_size": size, "mode": mode, "head": head, "error": last})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(_table(rows[-1:]).splitlines()[-1], flush=True)

    print()
    print(_table(rows))
    from nucleisam.utils.atomic import write_json_atomic

    machine = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    write_json_atomic(args.out, {"machine": machine, "results": rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
