"""Encoder weights from anywhere: our exported encoders and pretraining checkpoints, VIS-MAE /
Swin-MAE reference checkpoints, Microsoft and timm Swin checkpoints, or random init by name.

    encoder = load_encoder("runs/pretrain/mammo")                 # run folder: newest checkpoint
    encoder = load_encoder("checkpoint-799.pth", img_size=512)    # VIS-MAE reference, at 512 px
    encoder = load_encoder("swin_tiny.safetensors", img_size=512, window_size=8)  # tables resized
    encoder = load_encoder("random:vismae", img_size=224)

The format is told from the content. The architecture comes from the tensors' shapes (never
from arguments pickled beside them); settings no shape shows (LayerNorm eps, window
partitioning) from our own saved configs or the format's known conventions. Loading names
every tensor that was renamed, resized, folded, dropped or is missing, and refuses weights
that do not fit unless ``allow_missing=True``. No file is unpickled beyond plain data.
"""

from __future__ import annotations

import os

from vismae.models.formats import Checkpoint, read_checkpoint
from vismae.models.formats.adapt import Fit, fit_decoder, fit_encoder
from vismae.models.formats.report import LoadReport, shorten
from vismae.models.formats.swin_shapes import PATCH_WEIGHT, infer_architecture
from vismae.models.presets import PRESETS, encoder_config
from vismae.models.random_init import random_preset
from vismae.models.swin import EncoderConfig, SwinEncoder

__all__ = ["LoadReport", "load_encoder", "load_encoder_with_report", "load_mae_init"]

# Fixed by the tensors' shapes: an override could only make them fail to load.
ARCHITECTURE_FIELDS = frozenset({"embed_dim", "depths", "num_heads", "mlp_ratio"})

# Missing from a source by design, not by damage: supervised Swins never had a mask token.
FRESH_BY_DESIGN = frozenset({"mask_token"})


def load_encoder(
    source: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    allow_missing: bool = False,
    verbose: bool = True,
    fold_input_norm: bool = False,
    **overrides,
) -> SwinEncoder:
    """A ``SwinEncoder`` with the weights of ``source`` (a path, or ``random:<preset>``).

    ``img_size`` sets the working size (default: the source's, else where the last stage's
    map is one window: 224 px for window 7).
    ``overrides`` set other EncoderConfig fields that the tensors leave open: ``window_size``
    (relative-position tables are resized), ``drop_path_rate``, ``always_partition``,
    ``final_norm``, ``in_chans``. ``fold_input_norm`` folds the source's known input
    normalization into the patch embedding, so that the encoder gives the source's features on
    raw [0, 1] pixels: ImageNet's for supervised Swins, VIS-MAE's (0.223, 0.202) for reference
    checkpoints (not for Swin-MAE ones, which were trained on raw pixels).
    """
    encoder, _ = load_encoder_with_report(source, img_size, allow_missing, verbose, fold_input_norm, **overrides)
    return encoder


def load_encoder_with_report(
    source: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    allow_missing: bool = False,
    verbose: bool = True,
    fold_input_norm: bool = False,
    **overrides,
) -> tuple[SwinEncoder, LoadReport]:
    """``load_encoder`` that also returns what it did."""
    preset = random_preset(source)
    if preset is not None:
        encoder, report = _random_encoder(str(source), preset, img_size, overrides)
    else:
        checkpoint = read_checkpoint(source)
        encoder = SwinEncoder(_encoder_config(checkpoint, img_size, overrides))
        report = _load_encoder_weights(encoder, checkpoint, str(source), allow_missing, fold_input_norm)
    if verbose:
        report.print()
    return encoder, report


def load_mae_init(
    source: str | os.PathLike,
    mae,
    allow_missing: bool = False,
    verbose: bool = True,
    fold_input_norm: bool = False,
) -> LoadReport:
    """Start a ``SwinMAE`` from ``source``: the encoder always, the decoder too where the format
    has one whose structure matches this model's decoder (our pretraining checkpoints, the
    VIS-MAE reference's mirror decoder); otherwise the decoder keeps its random init and the
    report says why."""
    if random_preset(source) is not None:
        raise ValueError(f"{source}: a random init needs no init weights; leave init empty")
    checkpoint = read_checkpoint(source)
    _check_same_architecture(checkpoint, mae.config.encoder)
    report = _load_encoder_weights(mae.encoder, checkpoint, str(source), allow_missing, fold_input_norm)
    report.notes += _setting_differences(checkpoint.config, mae.config.encoder)
    report.decoder = _load_decoder(mae, checkpoint)
    if verbose:
        report.print()
    return report


# ---------------------------------------------------------------------------------------------


def _random_encoder(source: str, preset: str, img_size, overrides: dict) -> tuple[SwinEncoder, LoadReport]:
    if preset not in PRESETS:
        raise ValueError(f"{source}: unknown preset {preset!r}; use random:<preset> with one of {sorted(PRESETS)}")
    config = encoder_config(preset, img_size or 224, **overrides)
    encoder = SwinEncoder(config)
    note = f"every tensor randomly initialized ({preset} preset)"
    return encoder, LoadReport(source=source, format="random", file="", notes=[note])


def _encoder_config(checkpoint: Checkpoint, img_size, overrides: dict) -> EncoderConfig:
    """The source's architecture (checked against its tensors), the caller's working settings."""
    blocked = sorted(ARCHITECTURE_FIELDS & set(overrides))
    if blocked:
        raise ValueError(
            f"{checkpoint.file}: {', '.join(blocked)} come from the checkpoint's tensors and cannot be overridden"
        )
    inferred = infer_architecture(checkpoint.encoder, str(checkpoint.file))
    saved = checkpoint.config
    conflicts = [
        f"{key} {saved[key]} vs {value}"
        for key, value in inferred.items()
        if key in saved and _plain(saved[key]) != _plain(value)
    ]
    if conflicts:
        raise ValueError(
            f"{checkpoint.file}: the saved config disagrees with the tensors' shapes ({'; '.join(conflicts)})"
        )
    fields = {**saved, **inferred, **overrides}
    # A Swin is usually trained where its last map is one window: 224 px for window 7, 384 for 12.
    stride = fields["patch_size"] * 2 ** (len(fields["depths"]) - 1)
    fields["img_size"] = img_size or saved.get("img_size") or fields["window_size"] * stride
    return EncoderConfig.from_dict(fields)


def _load_encoder_weights(
    encoder: SwinEncoder, checkpoint: Checkpoint, source: str, allow_missing: bool, fold_input_norm: bool
) -> LoadReport:
    input_norm = checkpoint.input_norm if fold_input_norm else None
    fit = fit_encoder(checkpoint.encoder, encoder, input_norm)
    fresh = [key for key in fit.missing if key in FRESH_BY_DESIGN]
    missing = [key for key in fit.missing if key not in FRESH_BY_DESIGN]
    if (missing or fit.unexpected or fit.mismatched) and not allow_missing:
        raise ValueError(_misfit_message(source, "encoder", missing, fit))
    encoder.load_state_dict(fit.state, strict=False)
    dropped = dict(checkpoint.dropped)
    if fit.buffers:
        dropped["saved buffers, recomputed by the model"] = fit.buffers
    notes = list(checkpoint.notes) + fit.notes + _padding_notes(encoder.config)
    if fold_input_norm and checkpoint.input_norm is None:
        notes.append("fold_input_norm: this format has no known input normalization; nothing folded")
    return LoadReport(
        source=source,
        format=checkpoint.format,
        file=str(checkpoint.file),
        loaded=sorted(fit.state),
        notes=notes,
        dropped=dropped,
        missing=missing,
        unexpected=fit.unexpected,
        mismatched=fit.mismatched,
        fresh=fresh,
    )


def _load_decoder(mae, checkpoint: Checkpoint) -> str:
    kind = mae.config.decoder
    if checkpoint.decoder is None:
        return f"not loaded ({checkpoint.decoder_note}): the {kind} decoder starts from random init"
    source_in_chans = checkpoint.encoder[PATCH_WEIGHT].shape[1]
    fit = fit_decoder(checkpoint.decoder, mae.decoder, source_in_chans, mae.config.encoder.in_chans)
    if fit.missing or fit.unexpected or fit.mismatched:
        reason = _misfit_message(checkpoint.format, "decoder", fit.missing, fit, hint="")
        return f"NOT LOADED, it differs from this model's {kind} decoder ({reason}): it starts from random init"
    mae.decoder.load_state_dict(fit.state, strict=True)
    details = "; ".join(filter(None, [checkpoint.decoder_note, *fit.notes]))
    return f"loaded {len(fit.state)} tensors into the {kind} decoder" + (f" ({details})" if details else "")


def _check_same_architecture(checkpoint: Checkpoint, target: EncoderConfig) -> None:
    inferred = infer_architecture(checkpoint.encoder, str(checkpoint.file))
    differences = [
        f"{key} {inferred[key]} vs {_plain(getattr(target, key))}"
        for key in sorted(ARCHITECTURE_FIELDS)
        if _plain(inferred[key]) != _plain(getattr(target, key))
    ]
    if differences:
        raise ValueError(
            f"{checkpoint.file}: the init weights have another architecture than this model "
            f"(checkpoint vs model: {'; '.join(differences)}); choose the matching model preset"
        )


def _padding_notes(config: EncoderConfig) -> list[str]:
    """Where the window does not tile a stage's map, timm pads it. With ``always_partition``
    (the VIS-MAE mode) that is worth knowing: the reference code pads before its shift, timm
    after, so such maps are not bit-for-bit the reference's (224 px with window 7 tiles all)."""
    if not config.always_partition:
        return []
    grid_height, grid_width = config.grid_size
    maps = [(grid_height // 2**stage, grid_width // 2**stage) for stage in range(config.num_stages)]
    window = config.window_size
    untiled = [f"{height}x{width}" for height, width in maps if height % window or width % window]
    if not untiled:
        return []
    return [f"note: window {window} does not tile stage maps {', '.join(untiled)}: timm pads them"]


def _setting_differences(saved: dict, target: EncoderConfig) -> list[str]:
    """Settings no tensor shows but features depend on: worth a line when they differ."""
    return [
        f"note: the source used {key}={saved[key]}, this model {getattr(target, key)} (features will differ)"
        for key in ("norm_eps", "always_partition", "final_norm")
        if key in saved and saved[key] != getattr(target, key)
    ]


def _misfit_message(
    source: str, part: str, missing: list[str], fit: Fit, hint: str = " (allow_missing=True loads the rest)"
) -> str:
    problems = [
        f"{label} {len(keys)}: {shorten(keys)}"
        for label, keys in (("missing", missing), ("unexpected", fit.unexpected), ("shape mismatch", fit.mismatched))
        if keys
    ]
    return f"{source}: the weights do not fit the {part}; " + "; ".join(problems) + hint


def _plain(value):
    return tuple(value) if isinstance(value, list) else value
