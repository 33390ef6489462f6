//! Which exposition format a scrape gets, and the Prometheus text format 0.0.4 made from the
//! OpenMetrics text prometheus-client writes.
//!
//! Prometheus asks for OpenMetrics first in its `Accept` header; `curl`, older scrapers and
//! `promtool check metrics` speak the classic text format 0.0.4. The two differ in a few lines:
//! a counter's family is named with `_total` in 0.0.4, `info` becomes a gauge, `# UNIT`,
//! `_created` samples, exemplars and the closing `# EOF` do not exist in 0.0.4.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TYPE: &str = "application/openmetrics-text";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text004,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text004 => TEXT_004,
        }
    }

    /// OpenMetrics when the `Accept` header prefers it (by its `q`) over everything else it
    /// lists; the text format otherwise, also without an `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        let mut openmetrics = None::<f32>;
        let mut others = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if media == OPENMETRICS_TYPE {
                openmetrics = Some(openmetrics.map_or(q, |best| best.max(q)));
            } else {
                others = others.max(q);
            }
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= others => Format::OpenMetrics,
            _ => Format::Text004,
        }
    }
}

/// The 0.0.4 text for an OpenMetrics text.
pub fn to_text_004(openmetrics: &str) -> String {
    // Family name -> OpenMetrics type, from the `# TYPE` lines (which follow `# HELP`).
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = family_name(name, types.get(name).copied());
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            let name = family_name(name, types.get(name).copied());
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
        if sample_name.ends_with("_created") {
            continue;
        }
        // An exemplar follows ` # ` after the value.
        let sample = line.split(" # ").next().unwrap_or(line);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

fn family_name(name: &str, kind: Option<&str>) -> String {
    match kind {
        Some("counter") => format!("{name}_total"),
        Some("info") => format!("{name}_info"),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_header_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn everything_else_gets_text_004() {
        for accept in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
        ] {
            assert_eq!(Format::negotiate(accept), Format::Text004, "{accept:?}");
        }
    }

    #[test]
    fn converts_counters_info_and_drops_openmetrics_only_lines() {
        let om = "# HELP sg_packets Packets.\n# TYPE sg_packets counter\nsg_packets_total{a=\"b\"} 3 # {id=\"x\"} 1.0\nsg_packets_created 1.0\n\
                  # HELP sg_build Build.\n# TYPE sg_build info\nsg_build_info{version=\"1\"} 1\n\
                  # HELP sg_seconds Time.\n# TYPE sg_seconds histogram\n# UNIT sg_seconds seconds\nsg_seconds_bucket{le=\"+Inf\"} 0\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP sg_packets_total Packets.\n# TYPE sg_packets_total counter\nsg_packets_total{a=\"b\"} 3\n\
             # HELP sg_build_info Build.\n# TYPE sg_build_info gauge\nsg_build_info{version=\"1\"} 1\n\
             # HELP sg_seconds Time.\n# TYPE sg_seconds histogram\nsg_seconds_bucket{le=\"+Inf\"} 0\n"
        );
    }
}
