//! Reading a Prometheus text scrape (0.0.4 or OpenMetrics) the way the tests check it.

/// Value of the sample `series` (exact series text, labels included) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
