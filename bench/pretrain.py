"""Pretraining throughput: full SwinMAE training steps (mask drawn on the device, forward,
backward, AdamW step) on synthetic images. Prints one JSON line.

    python bench/pretrain.py --preset vismae --size 224 --batch 8 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import timm
import torch
from timm.optim import create_optimizer_v2

from vismae.models.decoders import DECODERS
from vismae.models.mae import build_mae
from vismae.models.presets import PRESETS

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_size(text: str) -> tuple[int, int]:
    """'224' or '512x384' (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"size must look like 224 or 512x384, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vismae", choices=sorted(PRESETS))
    parser.add_argument("--size", type=parse_size, default=(224, 224))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, compile)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(AUTOCAST_DTYPES))
    parser.add_argument("--decoder", default="mirror", choices=sorted(DECODERS))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush denormal floats to zero on the CPU (shifted-window softmax makes many)",
    )
    return parser.parse_args(argv)


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # The shifted-window attention mask (-100) leaves softmax weights near exp(-100), denormal in
    # fp32; x86 CPUs handle those in microcode, which roughly halves the speed of those blocks.
    flush_denormal = device.type == "cpu" and not args.keep_denormals and torch.set_flush_denormal(True)
    torch.manual_seed(0)

    model = build_mae(args.preset, args.size, decoder=args.decoder).to(device).train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # The VIS-MAE pretraining optimizer; timm keeps norms, biases and no_weight_decay() names undecayed.
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    forward = torch.compile(model) if args.compile else model
    autocast_dtype = AUTOCAST_DTYPES[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    images = torch.rand(args.batch, 1, *args.size, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def train_step() -> torch.Tensor:
        # Drawn outside the compiled graph, as a training loop would, but timed with the step.
        token_mask = model.draw_mask(args.batch, device, generator)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = forward(images, token_mask).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        train_step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = train_step()
    synchronize()
    elapsed, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu

    memory, memory_kind = peak_memory_mb(device)
    result = {
        "benchmark": "pretrain",
        "images_per_s": round(args.batch * args.steps / elapsed, 3),
        "step_s": round(elapsed / args.steps, 4),
        # process CPU seconds per step (all threads): steadier than wall time on a shared machine
        "cpu_s_per_step": round(cpu_seconds / args.steps, 4),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_memory_mb": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "final_loss": round(loss.item(), 5),
        "config": {
            "preset": args.preset,
            "img_size": list(args.size),
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "device": str(device),
            "precision": args.precision,
            "decoder": args.decoder,
            "compile": args.compile,
            "grad_checkpointing": args.grad_checkpointing,
            "flush_denormal": flush_denormal,
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        },
        "machine": machine(device),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
