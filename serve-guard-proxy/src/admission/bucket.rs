//! Token buckets per source prefix: how many TLS handshakes one /24 (or IPv6 aggregate prefix)
//! may start per second, so a handshake flood from one block cannot take the CPU.

use std::collections::HashMap;
use std::time::Instant;

use super::keys::PrefixKey;

/// Past this many tracked prefixes, buckets that have refilled (they remember nothing a new
/// bucket would not) are dropped: the map stays bounded by recent handshake starts.
const PRUNE_ABOVE: usize = 4096;

/// The rate and burst every prefix gets.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One bucket per prefix that started a handshake recently.
pub struct Buckets {
    rate: Rate,
    buckets: HashMap<PrefixKey, Bucket>,
}

impl Buckets {
    pub fn new(rate: Rate) -> Buckets {
        Buckets {
            rate,
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate.per_second).min(self.rate.burst)
    }

    /// Takes one token from `prefix`'s bucket; false when it is empty.
    pub fn take(&mut self, prefix: PrefixKey, now: Instant) -> bool {
        if self.buckets.len() > PRUNE_ABOVE && !self.buckets.contains_key(&prefix) {
            self.prune(now);
        }
        let tokens = match self.buckets.get(&prefix) {
            Some(bucket) => self.refill(bucket, now),
            None => self.rate.burst,
        };
        if tokens < 1.0 {
            return false;
        }
        self.buckets.insert(
            prefix,
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        true
    }

    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate.per_second, self.rate.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::Grouping;
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_prefix() {
        let g = Grouping {
            ipv6_aggregate_prefix: 48,
        };
        let (_, a) = g.keys("198.18.64.1".parse().unwrap());
        let (_, b) = g.keys("198.18.65.1".parse().unwrap());
        let mut buckets = Buckets::new(Rate {
            per_second: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| buckets.take(a, t0)));
        assert!(!buckets.take(a, t0), "burst spent");
        assert!(buckets.take(b, t0), "another /24 has its own bucket");
        assert!(buckets.take(a, t0 + Duration::from_millis(500)));
        assert!(!buckets.take(a, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn refilled_buckets_are_pruned() {
        let g = Grouping {
            ipv6_aggregate_prefix: 48,
        };
        let mut buckets = Buckets::new(Rate {
            per_second: 10.0,
            burst: 10.0,
        });
        let t0 = Instant::now();
        // PRUNE_ABOVE + 1 /48s of fd00:17::/32, then one more from another /32.
        for i in 0..=PRUNE_ABOVE as u16 {
            let ip = std::net::Ipv6Addr::new(0xfd00, 0x17, i, 0, 0, 0, 0, 1);
            buckets.take(g.keys(ip.into()).1, t0);
        }
        let (_, late) = g.keys("fd00:18::1".parse().unwrap());
        buckets.take(late, t0 + Duration::from_secs(1));
        assert_eq!(buckets.tracked(), 1);
    }
}
