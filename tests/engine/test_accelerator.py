"""The Accelerator factory: fp32 on the CPU whatever precision is asked for, said once."""

import pytest

from vismae.engine import accelerator as factory


def test_mixed_precision_falls_back_to_fp32_on_the_cpu_with_one_note(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setattr(factory, "_noted", set())
    assert factory.trains_on_cpu()
    made = factory.make_accelerator("bf16", grad_accum_steps=2, run_dir=tmp_path, log_with="tensorboard")
    assert made.mixed_precision == "no" and made.device.type == "cpu" and made.gradient_accumulation_steps == 2
    assert made.logging_dir == str(tmp_path / "tensorboard")
    assert capsys.readouterr().out == "note: train.mixed_precision=bf16 is for GPUs; training in fp32 on the CPU\n"
    factory.make_accelerator("bf16")  # an experiment makes many: the note is not repeated
    assert capsys.readouterr().out == ""
    assert factory.make_accelerator("no").mixed_precision == "no"
