"""Portable CPU numerics (utils.numerics): the pins win over any machine setting, and they make two
instruction-set settings compute the same bits where the machine's own kernels do not."""

from __future__ import annotations

import os

import pytest

from utils.numerics import ISA_SETTINGS, PORTABLE_CPU_ENV, emulated_environment, fingerprint_in, portable_environment


def test_the_pins_win_over_the_same_variables_of_the_environment():
    base = {"PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "OMP_NUM_THREADS": "8"}
    env = portable_environment(base)
    assert env["PATH"] == "/bin"
    assert {k: env[k] for k in PORTABLE_CPU_ENV} == PORTABLE_CPU_ENV
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE" and env["OMP_NUM_THREADS"] == "1"
    assert portable_environment(base, portable=False) == base


def test_an_emulated_machine_replaces_every_instruction_set_variable_of_the_shell():
    shell = {"PATH": "/bin", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}
    assert emulated_environment(shell, "native") == {"PATH": "/bin"}
    assert emulated_environment(shell, "avx2") == {"PATH": "/bin", **ISA_SETTINGS["avx2"]}


@pytest.mark.slow
def test_pinned_settings_agree_bit_for_bit_where_the_machines_kernels_differ():
    runs = {(setting, pinned): fingerprint_in(portable_environment(emulated_environment(os.environ, setting), pinned),
                                              steps=8)
            for setting in ("native", "avx2") for pinned in (False, True)}
    assert runs[("avx2", False)]["aten_capability"] == "AVX2"
    assert runs[("native", True)]["aten_capability"] == runs[("avx2", True)]["aten_capability"] == "AVX2"
    # the pins: one result whatever the machine setting
    assert runs[("native", True)] == runs[("avx2", True)]
    if runs[("native", False)]["aten_capability"] == "AVX2":
        pytest.skip("this CPU has no AVX-512: the unpinned settings dispatch alike, nothing to contrast")
    # unpinned, the settings reach the kernels: the AVX-512 and AVX2 paths train different weights
    assert runs[("native", False)]["weights"] != runs[("avx2", False)]["weights"]
