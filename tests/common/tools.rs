//! External client programs (coturn's `turnutils_*`, Debian's `stun`) used as independent
//! peers, and libfaketime. Without the program a test prints why and passes, unless
//! `RENDEZ_REQUIRE_CLIENTS=1` (as in CI, which installs them), where it fails instead.

use std::path::PathBuf;

/// The program's path on `$PATH`, or `None` (after printing why) when it is missing and
/// not required.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        let reason = format!("{name} is not installed (apt-get install coturn stun-client)");
        if std::env::var("RENDEZ_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
            panic!("{reason}, and RENDEZ_REQUIRE_CLIENTS=1");
        }
        eprintln!("skipped: {reason}");
    }
    found
}

/// libfaketime's preload library, or `None` (after saying why) when the test must skip:
/// it fails instead under `RENDEZ_REQUIRE_FAKETIME=1` (as in CI, which installs it).
pub fn libfaketime() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|path| path.is_file());
    if found.is_none() {
        let reason = "libfaketime is not installed (apt-get install libfaketime)";
        if std::env::var_os("RENDEZ_REQUIRE_FAKETIME").is_some_and(|v| v == "1") {
            panic!("{reason}, and RENDEZ_REQUIRE_FAKETIME=1");
        }
        println!("skipped: {reason}");
    }
    found
}
