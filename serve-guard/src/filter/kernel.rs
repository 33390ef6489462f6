//! The oldest kernel the filter runs on, checked before anything is loaded: an older kernel gets
//! an error naming the feature it lacks instead of a verifier dump or an EINVAL from deep inside
//! the loader.

#![allow(unsafe_code, reason = "uname(2)")]

use std::fmt;

/// A kernel release's version numbers, as `uname -r` starts ("5.10.0-32-amd64" is 5.10.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// What the filter needs, with the release that brought it (mainline). The newest is the minimum.
pub const REQUIRED_FEATURES: &[(KernelVersion, &str)] = &[
    (
        KernelVersion::new(4, 11),
        "LPM-trie maps (BPF_MAP_TYPE_LPM_TRIE) for the CIDR allow-lists",
    ),
    (
        KernelVersion::new(5, 8),
        "CAP_BPF and CAP_PERFMON (the unit runs without CAP_SYS_ADMIN) and BPF ring buffers (the program's log)",
    ),
    (
        KernelVersion::new(5, 9),
        "XDP attachment through BPF links (BPF_LINK_CREATE), which the agent pins so that the filter outlives it",
    ),
    (
        KernelVersion::new(5, 10),
        "re-attaching freplace extensions to a second target, which libxdp's multi-program dispatcher needs to swap dispatchers with serve-guard in a slot (xdp_attach = \"dispatcher\")",
    ),
];

/// The oldest supported kernel: the release of the newest required feature.
pub const MINIMUM: KernelVersion = REQUIRED_FEATURES[REQUIRED_FEATURES.len() - 1].0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("cannot read the kernel version (uname): {0}")]
    Read(String),
    #[error("cannot read a kernel version from '{0}' (expected e.g. 6.1.0-13-amd64)")]
    Parse(String),
    #[error(
        "kernel {release} is too old: serve-guard needs Linux {MINIMUM} or later; this kernel lacks {missing}"
    )]
    TooOld { release: String, missing: String },
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            patch: 0,
        }
    }

    /// The leading `major.minor[.patch]` of a release string; the rest (distribution suffix)
    /// is ignored.
    pub fn parse(release: &str) -> Result<Self, KernelError> {
        let bad = || KernelError::Parse(release.to_owned());
        let mut numbers = release.trim().split('.').map(|part| {
            let digits: &str = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            (digits.parse::<u32>().ok(), digits.len() == part.len())
        });
        let (Some(major), true) = numbers.next().ok_or_else(bad)? else {
            return Err(bad());
        };
        let (Some(minor), whole) = numbers.next().ok_or_else(bad)? else {
            return Err(bad());
        };
        // "5.10.0-32-amd64" has a patch level; "6.1-rc3" or "6.2+" does not.
        let patch = if whole {
            numbers.next().and_then(|(n, _)| n).unwrap_or(0)
        } else {
            0
        };
        Ok(Self {
            major,
            minor,
            patch,
        })
    }
}

/// Refuses a release older than [`MINIMUM`], naming every feature it lacks.
pub fn check_release(release: &str) -> Result<KernelVersion, KernelError> {
    let version = KernelVersion::parse(release)?;
    let missing: Vec<String> = REQUIRED_FEATURES
        .iter()
        .filter(|(since, _)| version < *since)
        .map(|(since, what)| format!("{what} (Linux {since})"))
        .collect();
    if missing.is_empty() {
        Ok(version)
    } else {
        Err(KernelError::TooOld {
            release: release.trim().to_owned(),
            missing: missing.join("; "),
        })
    }
}

/// Checks the running kernel. uname(2), not /proc/sys/kernel/osrelease: the unit's
/// `ProcSubset=pid` hides /proc/sys.
pub fn check_running() -> Result<KernelVersion, KernelError> {
    check_release(&running_release()?)
}

fn running_release() -> Result<String, KernelError> {
    // SAFETY: an all-zero utsname is a valid value of this plain C struct of byte arrays.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname only writes into the struct it is given, which lives on this stack frame.
    if unsafe { libc::uname(&mut names) } != 0 {
        return Err(KernelError::Read(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(names.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_releases_parse() {
        for (release, want) in [
            ("5.10.0-32-amd64", (5, 10, 0)),
            ("6.1.0-50-amd64\n", (6, 1, 0)),
            ("6.12.95+deb12-amd64", (6, 12, 95)),
            ("6.18.3", (6, 18, 3)),
            ("4.18.0-553.el8_10.x86_64", (4, 18, 0)),
            ("5.15.0-1063-aws", (5, 15, 0)),
            ("6.1-rc3", (6, 1, 0)),
            ("6.2+", (6, 2, 0)),
        ] {
            let v = KernelVersion::parse(release).unwrap();
            assert_eq!((v.major, v.minor, v.patch), want, "{release}");
        }
    }

    #[test]
    fn garbage_is_a_parse_error_naming_it() {
        for release in ["", "linux", "5", "x.10", "5.x"] {
            assert_eq!(
                KernelVersion::parse(release),
                Err(KernelError::Parse(release.to_owned()))
            );
        }
    }

    #[test]
    fn this_kernel_is_supported() {
        // The test host runs a current kernel: the real uname path is read and accepted.
        let version = check_running().unwrap();
        assert!(version >= MINIMUM, "{version}");
    }

    #[test]
    fn the_minimum_is_the_newest_feature() {
        assert_eq!(MINIMUM, KernelVersion::new(5, 10));
        assert!(REQUIRED_FEATURES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn supported_kernels_pass() {
        for release in [
            "5.10.0",
            "5.10.0-32-amd64",
            "6.1.0-50-amd64",
            "6.12.95+deb12-amd64",
        ] {
            assert!(check_release(release).is_ok(), "{release}");
        }
    }

    #[test]
    fn an_old_kernel_is_refused_naming_what_it_lacks() {
        let err = check_release("5.4.0-216-generic").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("kernel 5.4.0-216-generic is too old"),
            "{text}"
        );
        assert!(text.contains("Linux 5.10 or later"), "{text}");
        assert!(text.contains("freplace"), "{text}");
        assert!(text.contains("BPF links"), "{text}");
        assert!(text.contains("CAP_BPF"), "{text}");
        assert!(!text.contains("LPM"), "{text}");

        let text = check_release("5.9.16").unwrap_err().to_string();
        assert!(
            text.contains("dispatcher") && !text.contains("BPF links"),
            "{text}"
        );
        let text = check_release("5.8.18").unwrap_err().to_string();
        assert!(
            text.contains("BPF links") && !text.contains("CAP_BPF"),
            "{text}"
        );

        let text = check_release("4.9.0").unwrap_err().to_string();
        assert!(text.contains("LPM-trie"), "{text}");
    }
}
