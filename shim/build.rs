//! Links the `hull-shim` binary statically (static-pie) against glibc, alone in the
//! workspace.
//!
//! Why: a pause process and a monitor live beside every pod, and with glibc and ld.so
//! mapped dynamically ~1.6 MiB of each one's ~2 MiB RSS is shared library text
//! (docs/cri.md, "hull-shim"). Static, each is ~1.2 MiB.
//!
//! How, on stable cargo: `-C target-feature=+crt-static` is target-wide (it would hit
//! `hull`, build scripts and proc-macros too), so instead this script gives the bin's
//! link line, and only its (`rustc-link-arg-bins`, not the test harness), `-static-pie`
//! and a search dir that comes before the system's. In that dir, `libc.so`, `libgcc_s.so`,
//! ... are linker scripts (as glibc's own `libc.so` is one) naming the static archives,
//! so the `-lc -lgcc_s ...` std asks for (under `-Bdynamic`) resolve to `libc.a`,
//! `libgcc_eh.a` + `libgcc.a`, .... If an archive is missing (no libc6-dev), or
//! `HULL_SHIM_DYNAMIC=1`, the shim links dynamically as before, with a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `-l` names std and libc link on linux-gnu, and the static archives for each.
const LIBS: &[(&str, &[&str])] = &[
    ("gcc_s", &["libgcc_eh.a", "libgcc.a"]),
    ("c", &["libc.a"]),
    ("m", &["libm.a"]),
    ("pthread", &["libpthread.a"]),
    ("dl", &["libdl.a"]),
    ("rt", &["librt.a"]),
    ("util", &["libutil.a"]),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HULL_SHIM_DYNAMIC");
    println!("cargo:rerun-if-env-changed=CC");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    if env("CARGO_CFG_TARGET_OS") != "linux" || env("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if env("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static")
    {
        return; // already static by the caller's choice
    }
    if env("HULL_SHIM_DYNAMIC") == "1" {
        return;
    }
    if let Err(e) = static_link(&PathBuf::from(env("OUT_DIR"))) {
        println!("cargo:warning=hull-shim links dynamically (more RSS per pod): {e}");
    }
}

fn static_link(out: &Path) -> Result<(), String> {
    let cc = std::env::var("RUSTC_LINKER")
        .or_else(|_| std::env::var("CC"))
        .unwrap_or_else(|_| "cc".into());
    let find = |name: &str| -> Result<String, String> {
        let o = Command::new(&cc)
            .arg(format!("-print-file-name={name}"))
            .output()
            .map_err(|e| format!("{cc} -print-file-name={name}: {e}"))?;
        let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
        // Not found, cc echoes the bare name back.
        if p == name || !Path::new(&p).is_file() {
            return Err(format!(
                "{name} not found by {cc} (libc6-dev not installed?)"
            ));
        }
        Ok(p)
    };
    for f in ["rcrt1.o", "libc.a"] {
        find(f)?;
    }
    let dir = out.join("static-libs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    for (name, archives) in LIBS {
        let paths = archives
            .iter()
            .map(|a| find(a))
            .collect::<Result<Vec<_>, _>>()?;
        let script = dir.join(format!("lib{name}.so"));
        std::fs::write(&script, format!("GROUP({})\n", paths.join(" ")))
            .map_err(|e| format!("write {}: {e}", script.display()))?;
    }
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bins=-static-pie");
    Ok(())
}
