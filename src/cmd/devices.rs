//! `quiver devices`: the GPU adapters this machine offers to the wgpu backend.

use clap::Args as ClapArgs;

/// Arguments of `quiver devices` (none).
#[derive(ClapArgs, Debug)]
pub struct Args {}

/// Lists every adapter with its type, driver and storage limits, and says which one
/// `--backend auto` would use (never a CPU adapter such as lavapipe).
pub fn run(_: Args) -> anyhow::Result<()> {
    let adapters = quiver_shaders::list_adapters();
    if adapters.is_empty() {
        println!("no wgpu adapters (Vulkan, Metal or DX12); on Debian: apt-get install mesa-vulkan-drivers libvulkan1");
        return Ok(());
    }
    println!(
        "{:<44} {:<8} {:<14} {:>12} {:>12}  auto",
        "adapter", "api", "type", "max binding", "max buffer"
    );
    for a in &adapters {
        println!(
            "{:<44} {:<8} {:<14} {:>9} MiB {:>9} MiB  {}",
            a.name,
            a.backend,
            a.device_type,
            a.max_storage_binding >> 20,
            a.max_buffer >> 20,
            if a.hardware {
                "yes"
            } else {
                "no (CPU adapter: only with --backend wgpu)"
            }
        );
        if !a.driver.is_empty() {
            println!("  driver: {}", a.driver);
        }
    }
    Ok(())
}
