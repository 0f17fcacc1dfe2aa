//! Which code the CUDA backend loads on which driver: a cubin for the device first; PTX at an
//! ISA the driver reads when the cubin is not wanted or not loadable; and, when neither fits,
//! an error naming NVRTC's and the driver's versions. Run on the CUDA emulator, which can be
//! told a driver version (`QUIVER_EMU_DRIVER_VERSION`) and then refuses modules as that
//! driver would (kernels/emu/README.md); on a GPU only the default case runs (a real driver's
//! version cannot be changed). One test, cases in turn: they set process-wide variables.

#[path = "../../shaders/tests/parity/mod.rs"]
mod parity;

use quiver_kernels::probe::{cuda_availability, CudaAvailability};
use quiver_kernels::{CodeForm, CudaBackend, CudaVersion, PtxIsa};

fn on_emulator() -> Option<bool> {
    match cuda_availability() {
        CudaAvailability::Devices(_) => {
            let b = CudaBackend::open(0).expect("open CUDA device 0");
            Some(b.device_name().contains("emulator"))
        }
        other => {
            if std::env::var("QUIVER_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_CUDA=1 but {other}");
            }
            eprintln!("skipped: no CUDA device ({other})");
            None
        }
    }
}

/// Sets the process's variables for one case (the test is the only thread using them).
fn set(driver: Option<&str>, code: Option<&str>) {
    // SAFETY: this test binary runs one test, on one thread, while the variables change.
    unsafe {
        match driver {
            Some(v) => std::env::set_var("QUIVER_EMU_DRIVER_VERSION", v),
            None => std::env::remove_var("QUIVER_EMU_DRIVER_VERSION"),
        }
        match code {
            Some(v) => std::env::set_var("QUIVER_CUDA_CODE", v),
            None => std::env::remove_var("QUIVER_CUDA_CODE"),
        }
    }
}

/// Overwrites every cached file of `form` (`cubin`, `ptx`) in `QUIVER_CACHE_DIR` with
/// `bytes`; false without a cache folder.
fn tear_cache(form: &str, bytes: &[u8]) -> bool {
    let Some(dir) = std::env::var_os("QUIVER_CACHE_DIR") else {
        return false;
    };
    let folder = std::path::Path::new(&dir).join(form);
    let mut torn = 0;
    for f in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
        if f.path().extension().is_some_and(|e| e == form) {
            std::fs::write(f.path(), bytes).expect("overwrite a cached file");
            torn += 1;
        }
    }
    assert!(torn > 0, "nothing cached in {}", folder.display());
    true
}

#[test]
fn the_backend_loads_a_cubin_or_ptx_the_driver_reads() {
    let Some(emulated) = on_emulator() else {
        return;
    };
    let b = CudaBackend::open(0).expect("open with the default choice");
    let code = b.loaded_code();
    println!("default: {code}");
    assert_eq!(code.form, CodeForm::Cubin, "the cubin is the first choice");
    parity::searches_match_the_cpu_reference(&b);
    if !emulated {
        return;
    }
    let previous = std::env::var("QUIVER_EMU_DRIVER_VERSION").ok();

    // A torn or foreign file in the code cache is dropped and compiled again, not loaded.
    if tear_cache("cubin", b"\x7fELF torn") {
        let b = CudaBackend::open(0).expect("open over a torn cache");
        assert_eq!(b.loaded_code().form, CodeForm::Cubin);
        parity::searches_match_the_cpu_reference(&b);
    }

    // PTX as NVRTC writes it, on a driver of NVRTC's own release.
    set(Some("12090"), Some("ptx"));
    let b = CudaBackend::open(0).expect("PTX on a 12.9 driver");
    let code = b.loaded_code();
    println!("12.9 driver, PTX: {code}");
    let CodeForm::Ptx { isa, written } = code.form else {
        panic!("PTX asked for, {code} loaded")
    };
    assert_eq!(isa, written);
    assert_eq!(written, PtxIsa::new(8, 8), "NVRTC 12.9 writes PTX ISA 8.8");

    // An R550 driver (CUDA 12.4, ISA 8.4): PTX is declared at 8.4 and searches as before.
    set(Some("12040"), Some("ptx"));
    let b = CudaBackend::open(0).expect("PTX on a 12.4 driver");
    let code = b.loaded_code();
    println!("12.4 driver, PTX: {code}");
    assert_eq!(code.driver, CudaVersion(12040));
    assert_eq!(
        code.form,
        CodeForm::Ptx {
            isa: PtxIsa::new(8, 4),
            written: PtxIsa::new(8, 8)
        }
    );
    parity::searches_match_the_cpu_reference(&b);
    // Its cached PTX torn: each file is compiled again, not loaded.
    if tear_cache("ptx", b"//\n// torn") {
        let b = CudaBackend::open(0).expect("PTX over a torn cache");
        assert_eq!(b.loaded_code().form, code.form);
        parity::searches_match_the_cpu_reference(&b);
    }

    // The same driver by default: the cubin, which needs no PTX compiler at all.
    set(Some("12040"), None);
    let b = CudaBackend::open(0).expect("cubin on a 12.4 driver");
    assert_eq!(b.loaded_code().form, CodeForm::Cubin);
    parity::searches_match_the_cpu_reference(&b);

    // A CUDA 11.4 driver: NVRTC 12's cubins need a CUDA 12 driver, and ISA 7.4 is below what
    // sm_90 needs (7.8), so nothing loads; the error says why, naming both versions.
    set(Some("11040"), None);
    let err = CudaBackend::open(0).expect_err("nothing loads on a CUDA 11.4 driver");
    let msg = err.to_string();
    println!("11.4 driver: {msg}");
    for want in [
        "NVRTC 12.9",
        "PTX ISA 8.8",
        "CUDA 11.4",
        "ISA 7.4",
        "ISA 7.8",
        "cubin did not load",
    ] {
        assert!(msg.contains(want), "{want:?} not in: {msg}");
    }
    // Forcing PTX there says so instead of the cubin's failure.
    set(Some("11040"), Some("ptx"));
    let msg = CudaBackend::open(0).expect_err("PTX on 11.4").to_string();
    assert!(msg.contains("QUIVER_CUDA_CODE=ptx"), "{msg}");
    // A wrong setting is named.
    set(None, Some("sass"));
    let msg = CudaBackend::open(0)
        .expect_err("bad QUIVER_CUDA_CODE")
        .to_string();
    assert!(
        msg.contains("QUIVER_CUDA_CODE") && msg.contains("sass"),
        "{msg}"
    );

    set(previous.as_deref(), None);
}
