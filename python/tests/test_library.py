"""Versions, status codes, struct layouts, library discovery and the ABI check."""
import ctypes
import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lora
from lora import _capi as C
from conftest import REPO

PYTHON_DIR = Path(__file__).resolve().parents[1]
HEADER = REPO / "include" / "lora.h"


def test_versions():
    assert lora.version() == lora.__version__ == "0.2.0"
    major, minor, patch = (int(x) for x in lora.__version__.split("."))
    assert lora.version_number() == major * 10000 + minor * 100 + patch == 200
    assert lora.abi_version() == lora.ABI_VERSION == 1
    assert os.path.exists(lora.library_path)


def test_status_strings():
    for s in lora.Status:
        assert lora.status_string(s) == f"LORA_{s.name}"
    assert lora.status_string(99) == "LORA_UNKNOWN_STATUS"
    assert lora.LORA_ABORTED == lora.Status.ABORTED == 7
    assert lora.LORA_WRONG_STATE == 10


def test_error_attributes(tmp_path):
    with pytest.raises(lora.LoraError) as ei:
        lora.Model.load(tmp_path / "missing")
    e = ei.value
    assert isinstance(e, lora.LoraIOError)
    assert e.status == lora.LORA_IO_ERROR and isinstance(e.status, int)
    assert e.status_name == "LORA_IO_ERROR"
    assert e.message and "missing" in e.message
    assert e.function == "lora_model_load"
    assert "LORA_IO_ERROR" in str(e) and e.message in str(e)


def test_every_status_has_a_subclass_of_lora_error():
    from lora.errors import error_for_status
    for s in lora.Status:
        if s == lora.Status.OK:
            continue
        e = error_for_status(int(s), f"LORA_{s.name}", "m")
        assert isinstance(e, lora.LoraError) and e.status == s
    assert type(error_for_status(42, "LORA_UNKNOWN_STATUS", "")) is lora.LoraError


# Every params/info struct with its default-params function (None: filled by the caller).
STRUCTS = [
    (C.lora_model_params, C.lora_model_default_params_v2),
    (C.lora_model_info, None),
    (C.lora_sampling_params, C.lora_sampling_default_params_v2),
    (C.lora_adapter_params, C.lora_adapter_default_params_v2),
    (C.lora_trainer_params, C.lora_trainer_default_params_v2),
    (C.lora_train_progress, None),
    (C.lora_train_params, C.lora_train_default_params_v2),
]


WITH_DEFAULTS = [(s, d) for s, d in STRUCTS if d is not None]


@pytest.mark.parametrize("struct,defaults", WITH_DEFAULTS, ids=[s.__name__ for s, _ in WITH_DEFAULTS])
def test_default_params_struct_size_matches_ctypes(struct, defaults):
    p = struct()
    # Asked for more than any struct: _v2 writes the library's whole struct.
    defaults(ctypes.byref(p), ctypes.sizeof(struct))
    assert p.struct_size == ctypes.sizeof(struct), "the ctypes mirror and the library disagree on the size"
    big = (ctypes.c_ubyte * (ctypes.sizeof(struct) + 64))()
    defaults(ctypes.cast(big, ctypes.POINTER(struct)), len(big))
    assert struct.from_buffer(big).struct_size == ctypes.sizeof(struct), "the library's struct is not the mirror's"


def test_struct_layouts_match_the_header(tmp_path):
    """sizeof and every offsetof of the C header (compiled) equal the ctypes mirrors."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not HEADER.exists():
        pytest.skip("no C compiler or header")
    lines = []
    for struct, _ in STRUCTS:
        name = struct.__name__
        lines.append(f'printf("{name} sizeof %zu\\n", sizeof({name}));')
        for field, _ in struct._fields_:
            lines.append(f'printf("{name} {field} %zu\\n", offsetof({name}, {field}));')
    src = tmp_path / "layout.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include \"lora.h\"\nint main(void) {\n"
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", str(HEADER.parent), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    by_name = {s.__name__: s for s, _ in STRUCTS}
    for line in out.splitlines():
        name, field, value = line.split()
        s = by_name[name]
        want = int(value)
        got = ctypes.sizeof(s) if field == "sizeof" else getattr(s, field).offset
        assert got == want, f"{name}.{field}: ctypes {got}, C {want}"


def test_library_defaults_match_python_defaults():
    """Python keeps no defaults of its own: every tunable keyword defaults to None, which
    leaves the library's value (lora_*_default_params) in the params struct."""
    g = inspect.signature(lora.Model.generate).parameters
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop_at_eos"):
        assert g[name].default is None, name
    a = inspect.signature(lora.Adapter.create).parameters
    for name in ("r", "alpha", "dropout", "target_modules", "seed"):
        assert a[name].default is None, name
    ap = C.lora_adapter_params()
    C.lora_adapter_default_params(ctypes.byref(ap))
    assert ap.target_modules is None and ap.init == C.LORA_INIT_DEFAULT and a["init"].default == "default"
    t = inspect.signature(lora.Trainer.__init__).parameters
    for name in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "warmup_steps", "max_steps", "gradient_accumulation_steps", "batch_size", "block_size", "seed",
                 "lr_scheduler", "gradient_checkpointing", "num_train_epochs"):
        assert t[name].default is None, name
    tp = C.lora_trainer_params()
    C.lora_trainer_default_params(ctypes.byref(tp))
    assert tp.block_size == 0   # min(256, n_positions), resolved by the library


# ---- discovery and the ABI check (in subprocesses: the library loads once per process)

def _import_lora(env_changes, cwd, package_parent=PYTHON_DIR):
    env = dict(os.environ)
    env.pop("LORA_LIBRARY", None)
    env.update(env_changes)
    env["PYTHONPATH"] = str(package_parent)
    code = "import lora, sys; sys.stdout.write(lora.library_path)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(cwd), capture_output=True, text=True)


def test_lora_library_env_var_is_used():
    r = _import_lora({"LORA_LIBRARY": lora.library_path}, cwd=PYTHON_DIR)
    assert r.returncode == 0, r.stderr
    assert r.stdout == lora.library_path


def test_lora_library_env_var_pointing_nowhere_is_an_import_error(tmp_path):
    bogus = str(tmp_path / "nope" / "liblora.so")
    r = _import_lora({"LORA_LIBRARY": bogus}, cwd=tmp_path)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and bogus in r.stderr


def test_build_folders_are_searched():
    built = [REPO / ".build" / c / "liblora.so" for c in ("release", "debug")]
    if not any(p.exists() for p in built):
        pytest.skip("no liblora.so in the repository's .build folders")
    r = _import_lora({}, cwd=PYTHON_DIR)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout).resolve() in [p.resolve() for p in built if p.exists()]


def test_package_dir_is_searched_first(tmp_path):
    pkg = tmp_path / "site" / "lora"
    shutil.copytree(PYTHON_DIR / "lora", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so*"))
    shutil.copy(lora.library_path, pkg / "liblora.so")
    r = _import_lora({}, cwd=tmp_path, package_parent=pkg.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout == str(pkg / "liblora.so")


def test_not_found_lists_what_was_tried(tmp_path):
    pkg = tmp_path / "site" / "lora"
    shutil.copytree(PYTHON_DIR / "lora", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so*"))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    r = _import_lora({}, cwd=work, package_parent=pkg.parent)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "Tried:" in r.stderr
    assert str(pkg / "liblora.so") in r.stderr
    # Never relative to the current folder (a checkout-relative path only for the package's own checkout).
    assert str(work / ".build" / "debug" / "liblora.so") not in r.stderr
    assert "LORA_LIBRARY" in r.stderr


def test_abi_mismatch_is_an_import_error(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "fake.c"
    src.write_text("#include <stdint.h>\nuint32_t lora_abi_version(void) { return 2; }\n")
    so = tmp_path / "liblora.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    r = _import_lora({"LORA_LIBRARY": str(so)}, cwd=tmp_path)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "ABI version 2" in r.stderr


def test_openblas_coretype_is_not_set_by_the_binding(tmp_path):
    env = {"LORA_LIBRARY": lora.library_path}
    code = textwrap.dedent("""
        import os, sys
        os.environ.pop("OPENBLAS_CORETYPE", None)
        import lora
        sys.stdout.write(os.environ.get("OPENBLAS_CORETYPE", "<unset>"))
    """)
    e = dict(os.environ, **env, PYTHONPATH=str(PYTHON_DIR))
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "<unset>"


def test_every_header_function_has_a_prototype():
    """Each function declared in lora.h has argtypes/restype in lora._capi, next to its C prototype."""
    import re
    if not HEADER.exists():
        pytest.skip("no header")
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    declared = set(re.findall(r"\b(lora_[a-z0-9_]+)\s*\(", text))
    declared -= {"lora_token_callback", "lora_progress_callback"}  # function pointer typedefs
    assert len(declared) >= 38
    source = (PYTHON_DIR / "lora" / "_capi.py").read_text()
    for name in sorted(declared):
        f = getattr(C, name, None)
        assert f is not None, f"{name} is not bound"
        assert f.argtypes is not None, f"{name} has no argtypes"
        assert re.search(rf"^# .*\b{name}\(", source, flags=re.M), f"{name}: no C prototype comment"
        status_fn = re.search(rf"lora_status\s+{name}\s*\(", text) is not None
        assert (f.errcheck is not None) == status_fn, f"{name}: errcheck iff it returns lora_status"
