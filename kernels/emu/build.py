#!/usr/bin/env python3
"""Builds the CUDA emulator: a libcuda.so that runs Quiver's kernels on the CPU.

Usage: build.py [--banks] OUT_DIR   (writes OUT_DIR/libcuda.so and OUT_DIR/libcuda.so.1)

With --banks the emulator also measures shared-memory bank conflicts: the kernels are compiled
with -fsanitize=thread, whose instrumentation calls a hook for every load and store (the
hooks are driver.cpp's; no ThreadSanitizer runtime is linked), and the driver counts each
kernel's warp requests and wavefronts (`quiver_emu_banks`). Slower: for the bank test only.

Each kernels/cuda/*.cu is compiled as host C++ with cuda_emu.h: its system `#include`s are
dropped (the shim provides what they declared), its quoted ones (Quiver's `.cuh` headers
beside it) inlined, `extern __shared__ T name[];` becomes a pointer to the
launch's dynamic shared memory, and its source goes into a namespace of its own (helpers with
the same name in two kernels stay apart). Its `extern "C" __global__` entry points are
registered by name with the driver (driver.cpp), which looks them up when cudarc loads the
module NVRTC compiled from the same source.
"""

import os
import pathlib
import re
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
CUDA = HERE.parent / "cuda"

ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\s*\[\s*\]\s*;"
)
INCLUDE = re.compile(r"^\s*#\s*include\s*[<\"].*$", re.MULTILINE)
LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([\w.]+)"\s*$', re.MULTILINE)


def wrapper(cu: pathlib.Path) -> str:
    source = cu.read_text()
    entries = ENTRY.findall(source)
    if not entries:
        sys.exit(f"{cu}: no extern \"C\" __global__ entry point")
    # Quoted includes are Quiver's headers beside the kernels: inlined (once each); system
    # includes are dropped (cuda_emu.h provides what they declare).
    seen = set()

    def local(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        text = (CUDA / name).read_text().replace("#pragma once", "")
        return f'#line 1 "{CUDA / name}"\n{text}\n#line {source[:m.end()].count(chr(10)) + 2} "{cu}"'

    body = LOCAL_INCLUDE.sub(local, source)
    body = INCLUDE.sub("", body)
    body = DYNAMIC_SHARED.sub(r"\1* \2 = (\1*)emu::dynamic_shared();", body)
    ns = f"emu_{cu.stem}"
    lines = [
        '#include "cuda_emu.h"',
        '#include "registry.h"',
        f"namespace {ns} {{",
        f'#line 1 "{cu}"',
        body,
        f"}}  // namespace {ns}",
    ]
    for e in entries:
        lines.append(f'static emu::Registrar register_{e}("{e}", emu::invoker(&{ns}::{e}));')
    return "\n".join(lines) + "\n"


def main() -> None:
    args = sys.argv[1:]
    banks = "--banks" in args
    args = [a for a in args if a != "--banks"]
    if len(args) != 1:
        sys.exit(__doc__)
    out = pathlib.Path(args[0]).resolve()
    gen = out / "src"
    gen.mkdir(parents=True, exist_ok=True)
    kernels = []
    for cu in sorted(CUDA.glob("*.cu")):
        path = gen / f"{cu.stem}.cpp"
        # (headers, *.cuh, are inlined into the kernels that include them)
        text = wrapper(cu)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        kernels.append(path)
    lib = out / "libcuda.so"
    flags = [
        # No contraction of a multiply and an add into an FMA: NVRTC compiles the kernels
        # with --fmad=false, and where they want an FMA they write __fmaf_rn (std::fma here).
        "c++", "-std=c++17", "-O2", "-g", "-ffp-contract=off", "-fPIC", "-Wall",
        "-Wno-unknown-pragmas", "-Wno-unused-variable", "-I", str(HERE),
        # Extra flags, e.g. -DQUIVER_EMU_UCONTEXT (the portable fiber switch, for comparison).
        *os.environ.get("QUIVER_EMU_CXXFLAGS", "").split(),
    ]
    if banks:
        # The kernels instrumented, the driver not; linked without the sanitizer's runtime.
        flags.append("-DQUIVER_EMU_BANKS")
        objects = []
        for src in [HERE / "driver.cpp", *kernels]:
            obj = out / f"{src.stem}.o"
            tsan = [] if src.name == "driver.cpp" else ["-fsanitize=thread"]
            subprocess.run([*flags, *tsan, "-c", "-o", str(obj), str(src)], check=True)
            objects.append(obj)
        subprocess.run([*flags, "-shared", "-o", str(lib), *map(str, objects)], check=True)
    else:
        subprocess.run(
            [*flags, "-shared", "-o", str(lib), str(HERE / "driver.cpp"), *map(str, kernels)],
            check=True,
        )
    link = out / "libcuda.so.1"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("libcuda.so")
    mode = ", bank-conflict tracing" if banks else ""
    print(f"cuda emulator: {lib} ({len(kernels)} kernels{mode})")


if __name__ == "__main__":
    main()
