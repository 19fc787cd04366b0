//! The parser child's sandbox: what code that reads a hostile file may touch. The child
//! confines itself before it reads a byte of the file, and everything it starts inherits it.
//!
//! - **Filesystem** (Landlock, unprivileged, Linux 5.13+): read and execute beneath the
//!   system's program, library and configuration folders only, and read and write beneath a
//!   private folder of its own, which becomes its `TMPDIR` and which the worker removes when
//!   the child ends. The file store, the worker's configuration, the model files and other
//!   processes' `/proc` entries (their environments hold credentials) are out of reach.
//! - **Network**: no TCP connect or bind (Landlock ABI 4, Linux 6.7+), on top of the network
//!   namespace of its own that the worker gives it where `unshare` works
//!   ([`crate::isolation`]).
//! - **Signals and abstract Unix sockets** (Landlock ABI 6, Linux 6.12+): none outside itself.
//! - **Identity and processes**: a worker running as root has its child drop to `nobody`; a
//!   worker of another user gives it a user namespace of its own. Either way `RLIMIT_NPROC`
//!   binds it (the kernel exempts root's processes), counting `nobody`'s or the namespace's
//!   processes and threads.
//!
//! A kernel without Landlock (or with parts of it) enforces what it has; the worker says so
//! once at start ([`filesystem_confined`]).

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, ABI,
};

/// The newest Landlock ABI this code was written and tested against; older kernels get what
/// they support of it.
const ABI_TESTED: ABI = ABI::V6;

/// Processes and threads one parse may run at once, where the limit can apply: the parser's
/// own threads, `pdftoppm` and a `tesseract` per page in flight, with room to spare.
pub const MAX_PROCESSES: u64 = 256;

/// Where programs, their libraries, fonts and language data live: readable, nothing else is.
const SYSTEM: &[&str] = &[
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/var/cache/fontconfig",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/zero",
];

/// Why the child could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the private folder {0}: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error("landlock: {0}")]
    Landlock(#[from] RulesetError),
    #[error("process limit: {0}")]
    Processes(std::io::Error),
    #[error("dropping to nobody: {0}")]
    Identity(std::io::Error),
}

/// The private folder of the child `pid`: named like the OCR scratch folders, so the worker's
/// sweeps remove it with them.
pub fn private_folder(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{}{pid}-sandbox", crate::ocr::SCRATCH))
}

/// What the worker asks of its parser child beyond Landlock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Confinement {
    /// `RLIMIT_NPROC`, given only where it binds this child's processes.
    pub max_processes: Option<u64>,
    /// Drop from root to `nobody` (the worker is root).
    pub as_nobody: bool,
}

/// `nobody`'s uid and gid on Debian and most distributions.
const NOBODY: u32 = 65534;

/// Confines the calling process (the parser child, still single-threaded) and what it
/// starts.
pub fn confine(c: Confinement) -> Result<(), SandboxError> {
    if c.as_nobody {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        setgroups(&[])
            .and_then(|()| setgid(Gid::from_raw(NOBODY)))
            .and_then(|()| setuid(Uid::from_raw(NOBODY)))
            .map_err(|e| SandboxError::Identity(e.into()))?;
    }
    let private = private_folder(std::process::id());
    std::fs::create_dir_all(&private).map_err(|e| SandboxError::Folder(private.clone(), e))?;
    // Every scratch file the parser and its tools make goes beneath the private folder.
    std::env::set_var("TMPDIR", &private);
    if let Some(n) = c.max_processes {
        rlimit::setrlimit(rlimit::Resource::NPROC, n, n).map_err(SandboxError::Processes)?;
    }
    let mut readable: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
    if let Some(tessdata) = std::env::var_os("TESSDATA_PREFIX") {
        readable.push(PathBuf::from(tessdata));
    }
    let abi = ABI_TESTED;
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&readable, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            [Path::new("/dev/null")],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?
        .add_rules(path_beneath_rules([&private], AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(())
}

/// Whether this kernel enforces Landlock's filesystem rules: probed once; where it does not,
/// the worker says once at start that parsers can read what the worker can.
pub fn filesystem_confined() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let ok = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(ABI::V1))
            .and_then(|r| r.create())
            .is_ok();
        if !ok {
            tracing::warn!(
                "This kernel does not enforce Landlock: the parser child can read and write \
                 whatever the worker can."
            );
        }
        ok
    })
}
