"""`csmlab doctor`'s compatibility check: the installed stack against csmlab's pins, and moshi's own
pins (which pip reports as conflicts at install) named as overridden on purpose."""
from csmlab import doctor


def test_this_install_meets_every_pin_and_names_moshis_overridden_ones():
    lines = doctor.compatibility()
    total = len(doctor.pins())
    assert any(p.startswith("torch==") for p in doctor.pins()) and any(p.startswith("moshi==") for p in doctor.pins())
    assert lines[0].strip() == f"{total} of {total} pinned packages at csmlab's tested versions"
    assert not any("!!" in line for line in lines)
    assert "moshi's own pins overridden on purpose" in lines[-1] and "torch<2.10" in lines[-1]


def test_a_version_off_its_pin_is_reported_with_the_fix(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: "0.0.1" if name == "numpy" else real(name))
    lines = doctor.compatibility()
    total = len(doctor.pins())
    assert lines[0].strip().startswith(f"{total - 1} of {total}")
    assert any(line.strip().startswith("!! numpy 0.0.1: csmlab is tested with ==") and "make install" in line
               for line in lines)


def test_the_c_compiler_for_the_native_kernels_is_named_or_its_absence_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    line = doctor._c_compiler()
    assert "none" in line and "no-such-cc" in line and "PyTorch's kernels only" in line
    fake = tmp_path / "mycc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert doctor._c_compiler() == f"  c compiler   {fake}: csmlab builds Mimi's native CPU kernels with it on first use"
