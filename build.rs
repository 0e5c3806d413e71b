//! Packs the code the bridge runs (issue 10; README "Code the bridge runs, packed").
//!
//! The kernel maps a program's code 64 KiB around each page a fault touches, and the
//! bridge runs code scattered over the whole binary (its own, tokio's, rustls', serde's,
//! between the simulator's and the demo's), so ~8 MB of 11 MB of code was resident. In a
//! release build for x86_64 Linux (glibc), linked by rust-lld (the toolchain's default
//! there), the functions listed in `link/hot-functions.txt` (written by
//! `scripts/hot-functions.sh`, from a callgrind run of the real bridge) go first, side by
//! side: ~3 MB is resident instead.
//!
//! Names the linker does not find are skipped (`--no-warn-symbol-ordering`): after a
//! change, a toolchain or a Cargo.lock update that code is laid out as without the list,
//! and only memory is lost, until the list is written again. Other linkers may not know
//! the option, so it is given only where rust-lld links: Rust 1.90 or later (before,
//! the default was the system's `ld`), and no linker set in a `linker` setting or in
//! RUSTFLAGS. `PVE2MQTT_LINK_ORDER=off` leaves it out too. Other targets (the released
//! musl binaries, which cargo-zigbuild links) are laid out as before.
//!
//! Under the same conditions, and when the build machine's glibc is 2.36 or later (the
//! binary links that glibc, and needs one as new), the linker packs the relative
//! relocations (`-z pack-relative-relocs`, `DT_RELR`): the loader reads all of them at
//! start, and as `.rela.dyn` they were 405 KB that stayed resident; packed they are 8 KB.
use std::env;
use std::path::Path;

fn main() {
    const LIST: &str = "link/hot-functions.txt";
    println!("cargo:rerun-if-changed={LIST}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PVE2MQTT_LINK_ORDER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let wanted = var("PVE2MQTT_LINK_ORDER") != "off";
    let release = var("PROFILE") == "release";
    let gnu_x86_64 = var("TARGET") == "x86_64-unknown-linux-gnu";
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("fuse-ld");
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join(LIST);
    // `-Wl,` splits its argument at commas.
    let passable = list.is_file() && !list.to_string_lossy().contains(',');
    if wanted && release && gnu_x86_64 && !own_linker && passable && lld_by_default() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if wanted && release && gnu_x86_64 && !own_linker && lld_by_default() && relr_runs_here() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Does this machine's glibc read packed relative relocations (`DT_RELR`, glibc 2.36
/// and later)? The binary links the build machine's glibc, and one built with them
/// asks its loader for `GLIBC_ABI_DT_RELR`, so it would not start on an older one.
fn relr_runs_here() -> bool {
    if env::var("HOST").ok() != env::var("TARGET").ok() {
        return false;
    }
    let Ok(output) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().strip_prefix("glibc ").unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (2, 36))
}

/// Does this rustc link x86_64 Linux (glibc) with rust-lld by default (1.90 and later)?
fn lld_by_default() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = std::process::Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let minor = text
        .lines()
        .find_map(|line| line.strip_prefix("release: 1."))
        .and_then(|rest| rest.split('.').next())
        .and_then(|minor| minor.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
