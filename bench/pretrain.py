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
from machine_info import cpu_name  # bench/machine_info.py
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vismae.models.decoders import DECODERS
from vismae.models.mae import build_mae
from vismae.models.presets import PRESETS, encoder_config

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
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (aot_eager traces the same graphs without generating kernels: a quick check)",
    )
    parser.add_argument(
        "--window", type=int, default=None, help="attention window (default: the preset's); the sparse path needs "
        "every stage's map to tile into windows, e.g. 12 at 384 px, 8 at 512 px"
    )
    parser.add_argument("--label", default=None, help="a name for this measurement, repeated in the JSON line")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument(
        "--sparse", action="store_true", help="encode the visible tokens only (vismae.models.sparse_swin)"
    )
    parser.add_argument(
        "--mask-unit-px",
        type=int,
        default=None,
        help="masking unit in pixels (default: 16, or with --sparse the last stage's stride, 32 for the presets)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak for MFU, where the built-in table has none"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush denormal floats to zero on the CPU (shifted-window softmax makes many)",
    )
    return parser.parse_args(argv)


def machine(device: torch.device) -> dict:
    return {
        "cpu": cpu_name(),
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


# ---------------------------------------------------------------------------------------------
# FLOPs and model FLOP utilization.

# Dense (no structured sparsity) peaks in TFLOP/s from NVIDIA's datasheets, by device-name part;
# fp16 peaks equal bf16 ones on these parts. The first match wins.
GPU_PEAK_TFLOPS = (
    (("H200", "NVL"), {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (("H200",), {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (("H100", "NVL"), {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (("H100", "PCIE"), {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (("H100",), {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    (("A100",), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


def peak_tflops(device: torch.device, precision: str, given: float | None) -> tuple[float | None, str | None]:
    """(peak TFLOP/s for MFU, where it comes from); none on the CPU unless given."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device).upper()
    if precision == "fp32":
        # fp32 matmuls run on tensor cores (TF32) only when torch is allowed to.
        kind = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    else:
        kind = "bf16"
    for parts, peaks in GPU_PEAK_TFLOPS:
        if all(part in name for part in parts):
            return peaks[kind], f"{' '.join(parts)} {kind} dense datasheet peak"
    return None, f"no known peak for {name}: pass --peak-tflops"


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the GPU attention kernels but not the CPU one.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(model, images, draw_mask, autocast_dtype, grad_checkpointing: bool = False) -> int:
    """FLOPs of one forward + backward on ``images`` (the uncompiled model, gradients dropped).
    Model FLOPs, as MFU counts them: activation checkpointing's recomputed forward is left out."""
    token_mask = draw_mask()
    if grad_checkpointing:
        model.set_grad_checkpointing(False)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(images, token_mask).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return counter.get_total_flops()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # The shifted-window attention mask (-100) leaves softmax weights near exp(-100), denormal in
    # fp32; x86 CPUs handle those in microcode, which roughly halves the speed of those blocks.
    flush_denormal = device.type == "cpu" and not args.keep_denormals and torch.set_flush_denormal(True)
    torch.manual_seed(0)

    overrides = {"window_size": args.window} if args.window else {}
    if args.mask_unit_px:
        overrides["mask_unit_px"] = args.mask_unit_px
    elif args.sparse:  # the smallest unit the sparse encoder takes
        overrides["mask_unit_px"] = encoder_config(args.preset, args.size).total_stride
    model = build_mae(args.preset, args.size, decoder=args.decoder, sparse=args.sparse, **overrides).to(device).train()
    mask_unit_px = model.config.mask_unit_px
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # The VIS-MAE pretraining optimizer; timm keeps norms, biases and no_weight_decay() names undecayed.
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    forward = torch.compile(model, backend=args.compile_backend) if args.compile else model
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
    # Read before counting FLOPs: the count runs without activation checkpointing, and the
    # CPU figure is the process's peak so far.
    memory, memory_kind = peak_memory_mb(device)
    flops_per_image = count_flops(
        model, images, lambda: model.draw_mask(args.batch, device, generator), autocast_dtype, args.grad_checkpointing
    )
    flops_per_image /= args.batch

    images_per_s = args.batch * args.steps / elapsed
    achieved = flops_per_image * images_per_s
    peak, peak_source = peak_tflops(device, args.precision, args.peak_tflops)
    result = {
        "benchmark": "pretrain",
        "label": args.label,
        "images_per_s": round(images_per_s, 3),
        # Forward + backward per image as torch's FlopCounterMode counts them (matmuls,
        # convolutions, attention), so dense and sparse are counted alike.
        "gflops_per_image": round(flops_per_image / 1e9, 3),
        "achieved_gflop_per_s": round(achieved / 1e9, 2),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": round(achieved / (peak * 1e12), 4) if peak else None,
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
            "sparse": args.sparse,
            "mask_unit_px": mask_unit_px,
            "compile": args.compile_backend if args.compile else False,
            "window_size": model.config.encoder.window_size,
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
