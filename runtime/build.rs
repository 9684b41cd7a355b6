//! Link `hull-runtime` as a position-dependent executable.
//!
//! The runtime is exec'd several times per container (and re-execs itself once, see
//! `sealed_exe`), so its start-up cost is paid over and over. As a PIE, the dynamic
//! loader applies ~14,000 relative relocations at every start, which writes (copy-on-
//! write faults) every page of `.data.rel.ro` and the GOT: about 1 ms of CPU and ~0.3 MiB
//! of private memory per process. Linked `-no-pie`, the linker resolves them once at
//! build time and those pages stay shared, clean page cache. The library code is still
//! compiled position-independent (the `hull` binary links it as a PIE as usual).
fn main() {
    println!("cargo:rustc-link-arg-bin=hull-runtime=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
