//! The bookkeeping behind admission: every connection's source, prefix and stage, the counts
//! the limits read, and the choice of whom to displace. Plain data under one lock, no I/O, no
//! timers: [`super::Admission`] wraps it.
//!
//! A connection is *fresh* until a request head completes on it. Only fresh connections are
//! displaced (and handshakes still in progress, which are fresh too): a connection that has
//! sent a request (*proven*), let alone one with the token (*authenticated*), keeps its place.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::keys::{PrefixKey, Scope, SourceKey};

/// A handshake in progress is only displaced by another after it has had this long: the
/// displaced one's crypto is wasted work, so displacement can start at most
/// `max_handshakes / HANDSHAKE_DISPLACE_AFTER` extra handshakes per second.
pub const HANDSHAKE_DISPLACE_AFTER: Duration = Duration::from_millis(500);

/// The caps, already consistent (per source <= per prefix <= total).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_prefix: usize,
    pub per_source: usize,
    pub handshakes: usize,
}

impl Caps {
    pub fn new(total: usize, per_prefix: usize, per_source: usize, handshakes: usize) -> Caps {
        let total = total.max(1);
        let per_prefix = per_prefix.clamp(1, total);
        Caps {
            total,
            per_prefix,
            per_source: per_source.clamp(1, per_prefix),
            handshakes: handshakes.max(1),
        }
    }
}

/// Where a connection is in its life, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Fresh,
    Proven,
    Authenticated,
}

struct Conn {
    source: SourceKey,
    prefix: PrefixKey,
    stage: Stage,
    /// When its TLS handshake started, while one is in progress (it holds a handshake place).
    handshake_since: Option<Instant>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Group {
    count: usize,
    /// Fresh connections, oldest first (ids grow with accept order).
    fresh: BTreeSet<u64>,
    /// Connections in a TLS handshake, oldest first.
    handshaking: BTreeSet<u64>,
}

/// Why a connection was displaced or refused: the limit that was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections`, `max_connections_per_prefix` or `max_connections_per_source`.
    Connections(Scope),
    /// The TLS handshakes in progress.
    Handshakes,
}

/// A connection pushed out to make room: cancelled already, its counts given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Displaced {
    pub id: u64,
    pub prefix: PrefixKey,
    pub full: Full,
}

pub struct Table {
    caps: Caps,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    sources: HashMap<SourceKey, usize>,
    groups: HashMap<PrefixKey, Group>,
    /// (connections, prefix): the heaviest prefix last.
    by_weight: BTreeSet<(usize, PrefixKey)>,
    handshakes: usize,
}

impl Table {
    pub fn new(caps: Caps) -> Table {
        Table {
            caps,
            next_id: 0,
            conns: HashMap::new(),
            sources: HashMap::new(),
            groups: HashMap::new(),
            by_weight: BTreeSet::new(),
            handshakes: 0,
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Admits a connection from `source` in `prefix`, displacing one fresh connection when a
    /// limit is full: at the source's cap one of the source's own, at the prefix's cap one of
    /// the prefix's own, at the total the oldest of the heaviest prefix that has one. `Err`
    /// names the full limit when nobody can be displaced.
    pub fn admit(
        &mut self,
        source: SourceKey,
        prefix: PrefixKey,
    ) -> Result<(u64, CancellationToken, Option<Displaced>), Full> {
        let mut displaced = None;
        if self.sources.get(&source).copied().unwrap_or(0) >= self.caps.per_source {
            let victim = self.groups.get(&prefix).and_then(|g| {
                g.fresh
                    .iter()
                    .copied()
                    .find(|id| self.conns.get(id).is_some_and(|c| c.source == source))
            });
            let victim = victim.ok_or(Full::Connections(Scope::Source))?;
            displaced = Some(self.displace(victim, Full::Connections(Scope::Source)));
        } else if self.groups.get(&prefix).map_or(0, |g| g.count) >= self.caps.per_prefix {
            let victim = self
                .groups
                .get(&prefix)
                .and_then(|g| g.fresh.first().copied());
            let victim = victim.ok_or(Full::Connections(Scope::Prefix))?;
            displaced = Some(self.displace(victim, Full::Connections(Scope::Prefix)));
        } else if self.conns.len() >= self.caps.total {
            let victim = self.heaviest(|g| g.fresh.first().copied());
            let victim = victim.ok_or(Full::Connections(Scope::All))?;
            displaced = Some(self.displace(victim, Full::Connections(Scope::All)));
        }
        let id = self.next_id;
        self.next_id += 1;
        let cancel = CancellationToken::new();
        self.conns.insert(
            id,
            Conn {
                source,
                prefix,
                stage: Stage::Fresh,
                handshake_since: None,
                cancel: cancel.clone(),
            },
        );
        *self.sources.entry(source).or_insert(0) += 1;
        self.reweigh(prefix, |g| {
            g.count += 1;
            g.fresh.insert(id);
        });
        Ok((id, cancel, displaced))
    }

    /// The first candidate `pick` finds, walking the prefixes from the heaviest down.
    fn heaviest(&self, pick: impl Fn(&Group) -> Option<u64>) -> Option<u64> {
        self.by_weight
            .iter()
            .rev()
            .find_map(|(_, prefix)| self.groups.get(prefix).and_then(&pick))
    }

    /// Changes `prefix`'s group and keeps the weight index in step; drops an empty group.
    fn reweigh(&mut self, prefix: PrefixKey, change: impl FnOnce(&mut Group)) {
        let group = self.groups.entry(prefix).or_default();
        let before = group.count;
        change(group);
        let after = group.count;
        if before != after {
            self.by_weight.remove(&(before, prefix));
            if after > 0 {
                self.by_weight.insert((after, prefix));
            }
        }
        if after == 0 {
            self.groups.remove(&prefix);
        }
    }

    fn displace(&mut self, id: u64, full: Full) -> Displaced {
        let prefix = self.conns.get(&id).map(|c| c.prefix);
        if let Some(conn) = self.remove(id) {
            conn.cancel.cancel();
        }
        Displaced {
            id,
            prefix: prefix.expect("a victim is a tracked connection"),
            full,
        }
    }

    /// Forgets connection `id` (closed, or displaced); nothing when it is already gone.
    pub fn release(&mut self, id: u64) {
        self.remove(id);
    }

    fn remove(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if let Some(count) = self.sources.get_mut(&conn.source) {
            *count -= 1;
            if *count == 0 {
                self.sources.remove(&conn.source);
            }
        }
        if conn.handshake_since.is_some() {
            self.handshakes -= 1;
        }
        self.reweigh(conn.prefix, |g| {
            g.count -= 1;
            g.fresh.remove(&id);
            g.handshaking.remove(&id);
        });
        Some(conn)
    }

    /// Moves `id` on to `stage` (never back).
    pub fn advance(&mut self, id: u64, stage: Stage) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.stage >= stage {
            return;
        }
        conn.stage = stage;
        let prefix = conn.prefix;
        if let Some(group) = self.groups.get_mut(&prefix) {
            group.fresh.remove(&id);
        }
    }

    /// A place among the TLS handshakes in progress for `id`. When all are taken, one is
    /// displaced: the oldest of a prefix holding two or more places than `id`'s, else the
    /// oldest (of the heaviest prefix) that has run for [`HANDSHAKE_DISPLACE_AFTER`]. `Err`
    /// when there is neither.
    pub fn begin_handshake(&mut self, id: u64, now: Instant) -> Result<Option<Displaced>, Full> {
        let Some(conn) = self.conns.get(&id) else {
            // Displaced meanwhile: its task is being cancelled.
            return Err(Full::Handshakes);
        };
        if conn.handshake_since.is_some() {
            return Ok(None);
        }
        let prefix = conn.prefix;
        let mut displaced = None;
        if self.handshakes >= self.caps.handshakes {
            let victim = self
                .fair_share_victim(prefix)
                .or_else(|| self.stalled_handshake(now));
            let victim = victim.ok_or(Full::Handshakes)?;
            displaced = Some(self.displace(victim, Full::Handshakes));
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.handshake_since = Some(now);
        }
        self.handshakes += 1;
        self.reweigh(prefix, |g| {
            g.handshaking.insert(id);
        });
        Ok(displaced)
    }

    /// The oldest handshake of the prefix with the most in progress, when that is at least two
    /// more than `newcomer`'s prefix has: one block cannot hold the handshake places against
    /// others (and two blocks cannot take turns displacing each other).
    fn fair_share_victim(&self, newcomer: PrefixKey) -> Option<u64> {
        let mine = self
            .groups
            .get(&newcomer)
            .map_or(0, |g| g.handshaking.len());
        let heaviest = self.groups.values().max_by_key(|g| g.handshaking.len())?;
        (heaviest.handshaking.len() > mine + 1)
            .then(|| heaviest.handshaking.first().copied())
            .flatten()
    }

    /// The oldest handshake of the heaviest prefix (in connections) that has run for
    /// [`HANDSHAKE_DISPLACE_AFTER`]: most likely a client that stalled after the ClientHello.
    fn stalled_handshake(&self, now: Instant) -> Option<u64> {
        let old_enough = |candidate: &u64| {
            self.conns
                .get(candidate)
                .and_then(|c| c.handshake_since)
                .is_some_and(|since| {
                    now.saturating_duration_since(since) >= HANDSHAKE_DISPLACE_AFTER
                })
        };
        self.heaviest(|g| g.handshaking.first().copied().filter(old_enough))
    }

    /// `id`'s handshake ended (done, failed or timed out): its place is free.
    pub fn end_handshake(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.handshake_since.take().is_none() {
            return;
        }
        let prefix = conn.prefix;
        self.handshakes -= 1;
        self.reweigh(prefix, |g| {
            g.handshaking.remove(&id);
        });
    }

    #[cfg(test)]
    fn check(&self) {
        // The counts agree with the connections, whatever happened.
        let mut sources: HashMap<SourceKey, usize> = HashMap::new();
        let mut groups: HashMap<PrefixKey, usize> = HashMap::new();
        for c in self.conns.values() {
            *sources.entry(c.source).or_default() += 1;
            *groups.entry(c.prefix).or_default() += 1;
        }
        assert_eq!(sources, self.sources);
        assert_eq!(groups.len(), self.groups.len());
        for (p, n) in &groups {
            assert_eq!(self.groups[p].count, *n);
            assert!(self.by_weight.contains(&(*n, *p)));
        }
        assert_eq!(self.by_weight.len(), groups.len());
        let handshaking = self
            .conns
            .values()
            .filter(|c| c.handshake_since.is_some())
            .count();
        assert_eq!(handshaking, self.handshakes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::Grouping;
    use super::*;

    fn keys(ip: &str) -> (SourceKey, PrefixKey) {
        Grouping {
            ipv6_aggregate_prefix: 48,
        }
        .keys(ip.parse().unwrap())
    }

    fn admit(t: &mut Table, ip: &str) -> Result<(u64, CancellationToken, Option<Displaced>), Full> {
        let (s, p) = keys(ip);
        let r = t.admit(s, p);
        t.check();
        r
    }

    #[test]
    fn a_full_pool_displaces_the_oldest_fresh_connection_of_the_heaviest_prefix() {
        let mut t = Table::new(Caps::new(4, 4, 4, 4));
        // Three from one /24, one from another.
        let (a1, a1c, _) = admit(&mut t, "198.18.64.1").unwrap();
        let (a2, _, _) = admit(&mut t, "198.18.64.2").unwrap();
        let (_a3, _, _) = admit(&mut t, "198.18.64.3").unwrap();
        let (_b1, b1c, _) = admit(&mut t, "198.18.65.1").unwrap();
        // A newcomer from a third prefix takes the heaviest prefix's oldest place.
        let (_, _, d) = admit(&mut t, "198.18.66.1").unwrap();
        let d = d.unwrap();
        assert_eq!((d.id, d.full), (a1, Full::Connections(Scope::All)));
        assert!(a1c.is_cancelled() && !b1c.is_cancelled());
        // The displaced connection's own release later changes nothing.
        t.release(a1);
        t.check();
        assert_eq!(t.open(), 4);
        // A proven connection is not displaced: the next oldest fresh one of that prefix is.
        t.advance(a2, Stage::Proven);
        let (_, _, d) = admit(&mut t, "198.18.67.1").unwrap();
        assert_ne!(d.unwrap().id, a2);
    }

    #[test]
    fn proven_and_authenticated_connections_are_never_displaced() {
        let mut t = Table::new(Caps::new(3, 3, 3, 3));
        let (a, _, _) = admit(&mut t, "198.18.64.1").unwrap();
        let (b, _, _) = admit(&mut t, "198.18.64.2").unwrap();
        let (c, _, _) = admit(&mut t, "fd00:17::1").unwrap();
        t.advance(a, Stage::Authenticated);
        t.advance(b, Stage::Proven);
        t.advance(c, Stage::Proven);
        // Authenticated never goes back to proven.
        t.advance(a, Stage::Proven);
        assert_eq!(
            admit(&mut t, "198.18.70.1").err(),
            Some(Full::Connections(Scope::All))
        );
        t.release(b);
        t.check();
        assert!(admit(&mut t, "198.18.70.1").is_ok());
    }

    #[test]
    fn prefix_and_source_caps_displace_within_their_own_group() {
        let mut t = Table::new(Caps::new(100, 3, 2, 10));
        let (x1, _, _) = admit(&mut t, "198.18.64.1").unwrap();
        let (x2, _, _) = admit(&mut t, "198.18.64.1").unwrap();
        // The source is at its cap: its own oldest fresh connection makes room.
        let (_, _, d) = admit(&mut t, "198.18.64.1").unwrap();
        let d = d.unwrap();
        assert_eq!((d.id, d.full), (x1, Full::Connections(Scope::Source)));
        t.advance(x2, Stage::Proven);
        let (y1, _, _) = admit(&mut t, "198.18.64.2").unwrap();
        // The /24 is at its cap (x2, x3, y1): its oldest fresh one (x3) goes, not another /24's.
        let (_z, _, _) = admit(&mut t, "198.18.99.1").unwrap();
        let (_, _, d) = admit(&mut t, "198.18.64.3").unwrap();
        let d = d.unwrap();
        assert_eq!(d.full, Full::Connections(Scope::Prefix));
        assert!(d.id != x2 && d.id != y1);
        // IPv6: the /64 is the source, the /48 the prefix.
        let mut t = Table::new(Caps::new(100, 2, 1, 10));
        let (v, _, _) = admit(&mut t, "fd00:17:0:1::1").unwrap();
        t.advance(v, Stage::Proven);
        assert_eq!(
            admit(&mut t, "fd00:17:0:1::2").err(),
            Some(Full::Connections(Scope::Source))
        );
        admit(&mut t, "fd00:17:0:2::1").unwrap();
        let (_, _, d) = admit(&mut t, "fd00:17:0:3::1").unwrap();
        assert_eq!(d.unwrap().full, Full::Connections(Scope::Prefix));
        assert!(admit(&mut t, "fd00:18::1").unwrap().2.is_none());
    }

    #[test]
    fn handshakes_are_bounded_and_only_old_ones_displaced() {
        let mut t = Table::new(Caps::new(10, 10, 10, 2));
        let now = Instant::now();
        let (a, ac, _) = admit(&mut t, "198.18.64.1").unwrap();
        let (b, bc, _) = admit(&mut t, "198.18.66.1").unwrap();
        let (c, _, _) = admit(&mut t, "198.18.65.1").unwrap();
        assert_eq!(t.begin_handshake(a, now), Ok(None));
        assert_eq!(t.begin_handshake(b, now), Ok(None));
        t.check();
        // All places taken by young handshakes, one per prefix: refused before any crypto.
        assert_eq!(t.begin_handshake(c, now), Err(Full::Handshakes));
        // Once they have run long enough, one of them makes room.
        let later = now + HANDSHAKE_DISPLACE_AFTER;
        let d = t.begin_handshake(c, later).unwrap().unwrap();
        assert!(d.id == a || d.id == b, "{d:?}");
        assert_eq!(d.full, Full::Handshakes);
        assert!(ac.is_cancelled() != bc.is_cancelled());
        t.check();
        let b = if d.id == b { a } else { b };
        // A prefix with two places more than the newcomer's gives one up, however young.
        let mut f = Table::new(Caps::new(10, 10, 10, 2));
        let (p1, _, _) = admit(&mut f, "198.18.64.1").unwrap();
        let (p2, _, _) = admit(&mut f, "198.18.64.2").unwrap();
        let (q, _, _) = admit(&mut f, "198.18.65.1").unwrap();
        f.begin_handshake(p1, now).unwrap();
        f.begin_handshake(p2, now).unwrap();
        let d = f.begin_handshake(q, now).unwrap().unwrap();
        assert_eq!(d.id, p1);
        f.check();
        t.end_handshake(b);
        t.end_handshake(b);
        t.check();
        t.release(c);
        t.check();
        assert_eq!(t.handshakes, 0);
    }
}
