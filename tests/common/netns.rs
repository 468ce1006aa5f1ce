//! Network namespaces a test makes for itself (as root, with `ip` at hand): a loopback of
//! its own whose addresses and MTU it may change without touching the host.

use super::WAIT;

/// Moves the calling thread (alone) into a new network namespace with `lo` up; an error
/// says why that cannot be done here.
pub fn enter_new_network_namespace() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("a network namespace needs root".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Err("no `ip` command (iproute2)".into());
    }
    // SAFETY: unshare with CLONE_NEWNET changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    ip(&["link", "set", "lo", "up"]);
    Ok(())
}

/// Runs `ip ARGS` in this thread's namespace (a child inherits the forking thread's), bounded
/// in time; panics naming the command if it fails.
pub fn ip(args: &[&str]) {
    let mut child = std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`ip {}` did not finish within {WAIT:?}", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "`ip {}` failed: {status}", args.join(" "));
}

/// Moves the calling thread (alone) into a new mount namespace in which `dir` is an empty
/// tmpfs, so what it and its children write there never reaches the host's `dir`.
pub fn hide_under_tmpfs(dir: &str) -> Result<(), String> {
    let last_error = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let dir = std::ffi::CString::new(dir).unwrap();
    // SAFETY: unshare with CLONE_NEWNS changes only this thread's mount namespace (and its
    // file system attributes, copied from the process's).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(last_error("unshare(CLONE_NEWNS)"));
    }
    // SAFETY: plain mount(2) calls on NUL-terminated strings; the first keeps the tmpfs
    // below from propagating back to the host's namespace.
    unsafe {
        let root = c"/".as_ptr();
        if libc::mount(
            std::ptr::null(),
            root,
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(last_error("making / private"));
        }
        let tmpfs = c"tmpfs".as_ptr();
        if libc::mount(tmpfs, dir.as_ptr(), tmpfs, 0, std::ptr::null()) != 0 {
            return Err(last_error("mounting a tmpfs"));
        }
    }
    Ok(())
}
