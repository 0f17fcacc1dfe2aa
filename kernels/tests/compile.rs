//! Every CUDA kernel compiles with NVRTC for the GPU generations Quiver targets (compute_80:
//! A100; compute_90: H100), and, when `QUIVER_PTXAS` names a ptxas binary, the PTX assembles
//! for sm_80 / sm_90 without spilling a register (its `-v` report of registers, spills and
//! shared memory is printed; a spill, registers or static shared memory above an entry's
//! budget fail the test), and, when `QUIVER_NVDISASM` names an nvdisasm binary, the 8-bit
//! scan's SASS reads its codes with 128-bit global loads (`LDG.E.128`) and only the kernels
//! that ask for fused multiply-adds have FFMA instructions (the rest compile with
//! `--fmad=false`, as the CPU reference and the emulator compute). Each kernel also compiles
//! to a cubin (what the backend loads first), and its PTX declared at the oldest ISA its
//! architecture allows (what an old driver is given) assembles.
//!
//! Without NVRTC the test prints "skipped: NVRTC not found" and passes, unless
//! `QUIVER_REQUIRE_NVRTC=1` (set by scripts/test, which installs NVRTC from PyPI).

use std::path::{Path, PathBuf};
use std::process::Command;

use quiver_kernels::compile::{
    compile_cubin, compile_ptx, min_ptx_isa_for, nvrtc_present, with_ptx_isa,
};
use quiver_kernels::KERNELS;

const ARCHS: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

#[test]
fn every_kernel_compiles_and_assembles_for_sm80_and_sm90() {
    if !nvrtc_present() {
        if std::env::var("QUIVER_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("QUIVER_REQUIRE_NVRTC=1 but NVRTC (libnvrtc) cannot be loaded");
        }
        eprintln!("skipped: NVRTC not found (libnvrtc on LD_LIBRARY_PATH)");
        return;
    }
    let ptxas = std::env::var_os("QUIVER_PTXAS").map(PathBuf::from);
    let nvdisasm = std::env::var_os("QUIVER_NVDISASM").map(PathBuf::from);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ptx");
    std::fs::create_dir_all(&out).unwrap();
    for k in KERNELS {
        for (arch, sm) in ARCHS {
            let ptx = compile_ptx(k, arch).unwrap_or_else(|e| panic!("{e}"));
            for e in k.entries {
                assert!(
                    ptx.contains(&format!(".entry {e}(")),
                    "{}: no entry {e}",
                    k.name
                );
            }
            // Contraction only where the source asks for it (see `UNFUSED_KERNELS`); every
            // multiply and add elsewhere is rounded on its own (`.rn`), so ptxas cannot fuse.
            let fma = ptx.matches("fma.rn.f32").count();
            let loose = ptx
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    t.starts_with("mul.f32") || t.starts_with("add.f32") || t.starts_with("sub.f32")
                })
                .count();
            println!(
                "nvrtc: {}.cu -> {arch}: {fma} fma.rn.f32, {loose} contractible",
                k.name
            );
            assert_eq!(
                loose, 0,
                "{} {arch}: a float multiply or add ptxas may fuse",
                k.name
            );
            if UNFUSED_KERNELS.contains(&k.name) {
                assert_eq!(fma, 0, "{} {arch}: a fused multiply-add", k.name);
            }
            if FUSED_KERNELS.contains(&k.name) {
                assert!(
                    fma > 0,
                    "{} {arch}: no fma where __fmaf_rn is written",
                    k.name
                );
            }
            let path = out.join(format!("{}.{arch}.ptx", k.name));
            std::fs::write(&path, &ptx).unwrap();
            println!("nvrtc: {}.cu -> {arch}: {} bytes of PTX", k.name, ptx.len());
            // The cubin the backend loads first.
            let cubin = compile_cubin(k, sm).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{} {sm}: not an ELF image", k.name);
            println!(
                "nvrtc: {}.cu -> {sm}: {} bytes of cubin",
                k.name,
                cubin.len()
            );
            if let Some(ptxas) = &ptxas {
                // The PTX declared at the oldest ISA its target allows (what an old driver is
                // given) still assembles: the kernels use nothing newer.
                let (major, minor) = (sm[3..4].parse().unwrap(), sm[4..].parse().unwrap());
                let floor = min_ptx_isa_for(major, minor).expect("a known architecture");
                let low = out.join(format!("{}.{arch}.isa{floor}.ptx", k.name));
                std::fs::write(&low, with_ptx_isa(&ptx, floor)).unwrap();
                let run = Command::new(ptxas)
                    .args(["-arch", sm, "-o"])
                    .arg(out.join(format!("{}.{sm}.isa{floor}.cubin", k.name)))
                    .arg(&low)
                    .output()
                    .expect("run ptxas");
                assert!(
                    run.status.success(),
                    "ptxas {} {sm}, PTX declared at ISA {floor}: {}",
                    k.name,
                    String::from_utf8_lossy(&run.stderr)
                );
                let run = Command::new(ptxas)
                    .args(["-arch", sm, "-v", "-o"])
                    .arg(out.join(format!("{}.{sm}.cubin", k.name)))
                    .arg(&path)
                    .output()
                    .expect("run ptxas");
                let log = String::from_utf8_lossy(&run.stderr);
                assert!(run.status.success(), "ptxas {} {sm}: {log}", k.name);
                // Every entry reports its frame; none may spill registers to local memory
                // (a spill is a silent slowdown on the hot path).
                let frames: Vec<&str> =
                    log.lines().filter(|l| l.contains("spill stores")).collect();
                assert_eq!(
                    frames.len(),
                    k.entries.len(),
                    "ptxas {} {sm}: one frame report per entry expected:\n{log}",
                    k.name
                );
                for f in &frames {
                    assert!(
                        f.contains(" 0 bytes spill stores") && f.contains(" 0 bytes spill loads"),
                        "ptxas {} {sm}: a kernel spills: {}\n{log}",
                        k.name,
                        f.trim()
                    );
                }
                // Registers per thread, per entry: within the budgets docs/GPU.md's
                // occupancy figures assume (a kernel that grows past one is a regression).
                let mut entry = "";
                for line in log.lines() {
                    if let Some(at) = line.find("Compiling entry function '") {
                        let rest = &line[at + "Compiling entry function '".len()..];
                        entry = rest.split('\'').next().unwrap_or("");
                    }
                    if let Some(at) = line.find("Used ") {
                        let regs: usize = line[at + 5..]
                            .split(' ')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("ptxas {sm}: unreadable: {line}"));
                        let budget = register_budget(entry);
                        assert!(
                            regs <= budget,
                            "ptxas {sm} {entry}: {regs} registers, above its budget of {budget}"
                        );
                        // Static shared memory ("N bytes smem"; absent: none). Dynamic
                        // shared memory (scan8's staged table) is sized at launch.
                        let smem: usize = line
                            .split(", ")
                            .find_map(|part| part.strip_suffix(" bytes smem"))
                            .map_or(0, |n| n.trim().parse().unwrap_or(usize::MAX));
                        let budget = static_shared_budget(entry);
                        assert!(
                            smem <= budget,
                            "ptxas {sm} {entry}: {smem} bytes of static shared memory, above its \
                             budget of {budget}"
                        );
                    }
                }
                if let Some(nvdisasm) = &nvdisasm {
                    let cubin = out.join(format!("{}.{sm}.cubin", k.name));
                    check_wide_loads(nvdisasm, &cubin, k.name, sm);
                }
                for line in log.lines().filter(|l| {
                    l.contains("Used") || l.contains("Compiling entry") || l.contains("spill")
                }) {
                    println!(
                        "ptxas {sm} {}: {}",
                        k.name,
                        line.trim_start_matches("ptxas info    : ")
                    );
                }
            }
        }
    }
}

/// Entries whose SASS must read global memory 16 bytes at a time (`LDG.E.128`): the scans
/// read their codes in the GPU layouts' 16-byte chunks (8-bit interleaved, 4-bit in quads).
const WIDE_LOAD_ENTRIES: [&str; 5] = [
    "scan8",
    "scan8_select",
    "scan4",
    "scan4_quantized",
    "scan4_select",
];

/// Entries whose SASS must load each sub-quantizer's u8 table row from shared memory 16 bytes
/// at a time (`LDS.128`) and look it up in registers (`PRMT`): the 4-bit scans.
const REGISTER_TABLE_ENTRIES: [&str; 3] = ["scan4", "scan4_quantized", "scan4_select"];

/// Disassembles `cubin` with nvdisasm and checks that each entry of [`WIDE_LOAD_ENTRIES`] in
/// it has a 128-bit global load; prints each entry's count of global loads by width.
fn check_wide_loads(nvdisasm: &Path, cubin: &Path, kernel: &str, sm: &str) {
    let run = Command::new(nvdisasm)
        .arg("-c")
        .arg(cubin)
        .output()
        .expect("run nvdisasm");
    assert!(
        run.status.success(),
        "nvdisasm {kernel} {sm}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sass = String::from_utf8_lossy(&run.stdout);
    // Sections start at a line `.text.<entry>:`.
    let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in sass.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|n| n.strip_suffix(':')) {
            sections.push((name, Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(t);
        }
    }
    for (entry, lines) in &sections {
        let loads = |width: &str| {
            lines
                .iter()
                .filter(|l| l.contains(&format!("LDG.E{width}")))
                .count()
        };
        let (wide, all) = (loads(".128"), loads(""));
        let count = |op: &str| lines.iter().filter(|l| l.contains(op)).count();
        let (ffma, prmt) = (count("FFMA"), count("PRMT"));
        let shared_rows = lines
            .iter()
            .filter(|l| l.contains("LDS") && l.contains(".128"))
            .count();
        println!(
            "sass {sm} {entry}: {all} global loads, {wide} of them 128-bit; {ffma} FFMA; \
             {shared_rows} 128-bit shared loads; {prmt} PRMT"
        );
        if WIDE_LOAD_ENTRIES.contains(entry) {
            assert!(wide > 0, "sass {sm} {entry}: no 128-bit global load");
        }
        if REGISTER_TABLE_ENTRIES.contains(entry) {
            assert!(shared_rows > 0, "sass {sm} {entry}: no 128-bit shared load");
            assert!(prmt > 0, "sass {sm} {entry}: no byte permute");
        }
    }
    for entry in WIDE_LOAD_ENTRIES {
        if kernel == entry {
            assert!(
                sections.iter().any(|(e, _)| e == &entry),
                "sass {sm}: no section for {entry}"
            );
        }
    }
}

/// Kernels whose PTX has no fused multiply-add: they multiply and add as separate, rounded
/// operations (`mul.rn` / `add.rn`, which ptxas does not contract either), as the CPU does —
/// the lookup tables, on which the scans' exact parity rests, and the 4-bit quantization.
/// (Their SASS may still hold FFMA: ptxas expands a correctly rounded division into them.)
const UNFUSED_KERNELS: [&str; 4] = ["tables", "scan8", "scan4", "topk"];

/// Kernels that fuse multiply-adds where their source says `__fmaf_rn`.
const FUSED_KERNELS: [&str; 2] = ["coarse", "refine"];

/// Static shared memory each entry point may declare (bytes).
fn static_shared_budget(entry: &str) -> usize {
    match entry {
        // 8 dimensions × 132 (128 rows, padded) of queries and of centroids.
        "coarse_distances" | "coarse_select" => 2 * 8 * 132 * 4,
        _ => 0,
    }
}

/// The most registers per thread each entry point may use (docs/GPU.md's ptxas table, with
/// a little room).
fn register_budget(entry: &str) -> usize {
    match entry {
        "warp_select" | "select_strided" => 96,
        // 64 dot products, 8 norms and 16 operands held in registers.
        "coarse_distances" => 128,
        // The same with the queues; `__launch_bounds__(256, 2)` holds it to 128.
        "coarse_select" => 128,
        "lookup_tables" | "refine" | "refine_candidates" => 40,
        "scan8" | "scan4" | "scan4_quantized" | "scan_items" => 48,
        "scan8_select" | "scan4_select" => 96,
        other => panic!("no register budget for entry {other}: add one"),
    }
}
