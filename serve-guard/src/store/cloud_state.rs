//! `<state_dir>/cloud-cidrs`: the cloud's last good answer. A restart or a reboot puts it in
//! force at once, so an outage of the metadata service never locks the VPC's clients out.

use super::{StoreError, fsutil};
use crate::cidr::CidrList;
use crate::config::cloud::Provider;
use std::io;
use std::path::{Path, PathBuf};

pub const FILE: &str = "cloud-cidrs";
const HEADER: &str = "serve-guard: the VPC's ranges as the cloud last gave them; do not edit.";
const PROVIDER: &str = "# provider ";
const FETCHED: &str = "# fetched ";

/// The cloud's ranges as last applied, and when the cloud gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub provider: Provider,
    /// Unix seconds of the answer.
    pub fetched_unix: u64,
    pub list: CidrList,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The recorded answer; `None` when the cloud never answered on this node.
pub fn read(state_dir: &Path) -> Result<Option<Recorded>, StoreError> {
    let path = path(state_dir);
    let text = match fsutil::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let corrupt = |reason: String| StoreError::CorruptCloudState {
        path: path.clone(),
        reason,
    };
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .ok_or_else(|| corrupt(format!("no `{}` line", prefix.trim_start_matches("# "))))
    };
    let provider = field(PROVIDER)?
        .parse::<Provider>()
        .map_err(|e| corrupt(e.to_string()))?;
    let fetched_unix = field(FETCHED)?
        .parse::<u64>()
        .map_err(|e| corrupt(format!("fetched: {e}")))?;
    let (list, _) = CidrList::from_file_text(&text).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(Recorded {
        provider,
        fetched_unix,
        list,
    }))
}

pub fn write(state_dir: &Path, recorded: &Recorded) -> Result<(), StoreError> {
    let path = path(state_dir);
    let text = format!(
        "{PROVIDER}{}\n{FETCHED}{}\n{}",
        recorded.provider,
        recorded.fetched_unix,
        recorded.list.to_file_text(HEADER)
    );
    fsutil::write_atomic(&path, text.as_bytes()).map_err(|source| StoreError::Io {
        action: "write",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let recorded = Recorded {
            provider: Provider::Gcp,
            fetched_unix: 1_765_000_000,
            list: CidrList::new(["10.0.0.0/16".parse().unwrap(), "fd20::/64".parse().unwrap()])
                .unwrap(),
        };
        write(dir.path(), &recorded).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(recorded));
        std::fs::write(
            path(dir.path()),
            "# provider mars\n# fetched 1\n10.0.0.0/8\n",
        )
        .unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("mars"), "{e}");
    }
}
