//! Every CUDA kernel compiles with NVRTC for the GPU generations Quiver targets (compute_80:
//! A100; compute_90: H100), and, when `QUIVER_PTXAS` names a ptxas binary, the PTX assembles
//! for sm_80 / sm_90 without spilling a register (its `-v` report of registers, spills and
//! shared memory is printed; a spill, registers or static shared memory above an entry's
//! budget fail the test), and, when `QUIVER_NVDISASM` names an nvdisasm binary, the 8-bit
//! scan's SASS reads its codes with 128-bit global loads (`LDG.E.128`).
//!
//! Without NVRTC the test prints "skipped: NVRTC not found" and passes, unless
//! `QUIVER_REQUIRE_NVRTC=1` (set by scripts/test, which installs NVRTC from PyPI).

use std::path::{Path, PathBuf};
use std::process::Command;

use quiver_kernels::compile::{compile_ptx, nvrtc_present};
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
            let path = out.join(format!("{}.{arch}.ptx", k.name));
            std::fs::write(&path, &ptx).unwrap();
            println!("nvrtc: {}.cu -> {arch}: {} bytes of PTX", k.name, ptx.len());
            if let Some(ptxas) = &ptxas {
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

/// Entries whose SASS must read global memory 16 bytes at a time (`LDG.E.128`): the 8-bit
/// scan reads its codes in the interleaved layout's 16-byte chunks.
const WIDE_LOAD_ENTRIES: [&str; 1] = ["scan8"];

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
        println!("sass {sm} {entry}: {all} global loads, {wide} of them 128-bit");
        if WIDE_LOAD_ENTRIES.contains(entry) {
            assert!(wide > 0, "sass {sm} {entry}: no 128-bit global load");
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

/// Static shared memory each entry point may declare (bytes).
fn static_shared_budget(entry: &str) -> usize {
    match entry {
        // 16 dimensions × (64 + 1) of queries and of centroids.
        "coarse_distances" => 2 * 16 * 65 * 4,
        _ => 0,
    }
}

/// The most registers per thread each entry point may use (docs/GPU.md's ptxas table, with
/// a little room).
fn register_budget(entry: &str) -> usize {
    match entry {
        "warp_select" | "select_strided" => 96,
        // 16 dot products, 4 norms and 8 operands held in registers.
        "coarse_distances" => 56,
        "lookup_tables" | "refine" | "refine_candidates" => 40,
        "scan8" | "scan4" | "scan4_quantized" | "scan_items" => 48,
        other => panic!("no register budget for entry {other}: add one"),
    }
}
