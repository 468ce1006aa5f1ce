//! With the `xdp` feature: compiles the kernel fast path (bpf/*.bpf.c) for the BPF target
//! with clang, into OUT_DIR, where `src/net/xdp` embeds it with `include_bytes!`. Without
//! the feature nothing is built and no C compiler is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs: rendez's relay, and a pass-everything program the XDP tests attach to the
/// far end of their veth pair.
const PROGRAMS: [&str; 2] = ["relay", "pass"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CLANG");
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    for program in PROGRAMS {
        let source = Path::new("bpf").join(format!("{program}.bpf.c"));
        println!("cargo::rerun-if-changed={}", source.display());
        compile(&clang, &source, &out.join(format!("{program}.bpf.o")));
    }
    // Headers the programs include.
    println!("cargo::rerun-if-changed=bpf/stun_binding.h");
}

/// `clang -O2 -g -target bpf`, with the host's multiarch include directory for
/// <asm/types.h> (Debian keeps it apart), failing the build with what to install.
fn compile(clang: &str, source: &Path, object: &Path) {
    let mut command = Command::new(clang);
    command.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    if let Some(multiarch) = multiarch_include(clang) {
        command.arg("-I").arg(multiarch);
    }
    command.arg("-c").arg(source).arg("-o").arg(object);
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "the `xdp` feature: `clang` failed ({status}) on {}; it needs the kernel and libbpf headers (Debian: apt install clang libbpf-dev linux-libc-dev)",
            source.display()
        ),
        Err(error) => panic!(
            "the `xdp` feature needs clang to compile {} for the BPF target, and `{clang}` cannot be run: {error}; install it (Debian: apt install clang libbpf-dev) or name it in CLANG",
            source.display()
        ),
    }
}

/// /usr/include/<multiarch>, as clang names it, if it exists.
fn multiarch_include(clang: &str) -> Option<PathBuf> {
    let output = Command::new(clang).arg("-print-multiarch").output().ok()?;
    let triple = String::from_utf8(output.stdout).ok()?;
    let dir = Path::new("/usr/include").join(triple.trim());
    (!triple.trim().is_empty() && dir.is_dir()).then_some(dir)
}
