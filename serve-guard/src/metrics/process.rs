//! The standard `process_*` metrics (the names every Prometheus client library uses), read from
//! `/proc/self` at each scrape: resident and virtual memory, CPU time, open and allowed file
//! descriptors, start time.

#![allow(unsafe_code, reason = "sysconf(3) and getrlimit(2)")]

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::path::Path;

const PROC_SELF: &str = "/proc/self";
/// Field index (0-based, counted after the `(comm)` field) of utime, stime, starttime in
/// /proc/self/stat (proc(5) numbers them 14, 15 and 22, the comm being 2).
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;
const STAT_STARTTIME: usize = 19;

/// Adds what can be read now; a figure that cannot be read is left out.
pub fn register(registry: &mut Registry) {
    let page = sysconf(libc::_SC_PAGESIZE);
    let ticks = sysconf(libc::_SC_CLK_TCK);
    if let Some((virt, rss)) = statm()
        && let Some(page) = page
    {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            ConstGauge::new(to_i64(rss * page)),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            ConstGauge::new(to_i64(virt * page)),
        );
    }
    if let Some(stat) = stat_fields()
        && let Some(ticks) = ticks
    {
        let field = |i: usize| stat.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(STAT_UTIME), field(STAT_STIME)) {
            registry.register(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                ConstCounter::new((utime + stime) as f64 / ticks as f64),
            );
        }
        if let (Some(start), Some(boot)) = (field(STAT_STARTTIME), boot_time()) {
            registry.register(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                ConstGauge::new(boot as f64 + start as f64 / ticks as f64),
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir(Path::new(PROC_SELF).join("fd")) {
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            // The read_dir handle itself is one of them.
            ConstGauge::new(to_i64(fds.count().saturating_sub(1) as u64)),
        );
    }
    if let Some(max) = max_fds() {
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            ConstGauge::new(to_i64(max)),
        );
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// (virtual, resident) in pages.
fn statm() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(Path::new(PROC_SELF).join("statm")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// The fields of /proc/self/stat after `(comm)`, which may itself hold spaces and parentheses.
fn stat_fields() -> Option<Vec<String>> {
    let text = std::fs::read_to_string(Path::new(PROC_SELF).join("stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 0.0);
    }
}
