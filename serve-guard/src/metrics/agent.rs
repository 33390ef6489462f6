//! The agent's own figures: the XDP filter's counters (read from the kernel at each scrape), the
//! CIDR list, readiness, whether each interface still has the filter attached, the listeners a
//! source outside the list reaches and the sessions at risk (the exposure audit), and build info.

use super::MetricsState;
use crate::filter::{LinkState, PinLayout};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    reason: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    interface: String,
    /// `xdp` or `tc`.
    hook: String,
    /// driver, skb, tcx, clsact.
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    protocol: String,
    port: String,
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    mode: String,
}

/// Adds the agent's figures. Counters that cannot be read are left out (and logged) so the CIDR
/// and readiness figures still reach the scraper.
pub async fn register(state: &MetricsState, registry: &mut Registry) {
    let stats = match state.view.stats().await {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::warn!("metrics: cannot read the counters: {e}");
            None
        }
    };
    if let Some(stats) = stats {
        let packets = Family::<CounterLabels, Counter>::default();
        let bytes = Family::<CounterLabels, Counter>::default();
        for row in &stats.counters {
            let labels = CounterLabels {
                reason: row.reason.name().to_owned(),
                family: row.family.name().to_owned(),
            };
            // A fresh registry per scrape: inc_by from zero sets the kernel's running total.
            packets.get_or_create(&labels).inc_by(row.packets);
            bytes.get_or_create(&labels).inc_by(row.bytes);
        }
        registry.register(
            "packets",
            "Packets seen by the XDP filter, by verdict reason and address family, summed over CPUs",
            packets,
        );
        registry.register(
            "bytes",
            "Bytes seen by the XDP filter, by verdict reason and address family, summed over CPUs",
            bytes,
        );
    }

    let listing = state.store.summary();
    let cidrs = Family::<FamilyLabel, Gauge>::default();
    for (family, count) in [("ipv4", listing.ipv4), ("ipv6", listing.ipv6)] {
        cidrs
            .get_or_create(&FamilyLabel {
                family: family.into(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register("cidrs", "CIDRs in the allow-list, by address family", cidrs);

    let revision = Gauge::<i64>::default();
    revision.set(i64::try_from(listing.revision).unwrap_or(i64::MAX));
    registry.register(
        "cidr_revision",
        "Revision of the CIDR allow-list (counts list changes; survives restarts)",
        revision,
    );

    let stats = state.store.stats();
    let last_apply = Gauge::<i64>::default();
    last_apply
        .set(i64::try_from(stats.last_apply_unix.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "cidr_last_apply_timestamp_seconds",
        "Unix time of the last CIDR list change applied by this agent (0: none since start)",
        last_apply,
    );

    let errors = Counter::<u64>::default();
    errors.inc_by(stats.apply_errors.load(Ordering::Relaxed));
    registry.register(
        "cidr_apply_errors",
        "CIDR changes that failed to apply: map updates refused, invalid edits of the file",
        errors,
    );

    if let Some(cloud) = state.store.cloud_status() {
        register_cloud(registry, &cloud, &listing);
    }

    let ready = Gauge::<i64>::default();
    ready.set(i64::from((state.ready)()));
    registry.register(
        "ready",
        "1 once the filter is attached and its maps are filled",
        ready,
    );

    if let Some(count) = state.view.token_reload_errors() {
        let errors = Counter::<u64>::default();
        errors.inc_by(count);
        registry.register(
            "token_reload_errors",
            "Re-reads of the token file that found it invalid (the tokens in force stayed)",
            errors,
        );
    }

    let attached = Family::<AttachLabels, Gauge>::default();
    for link in PinLayout::new(&state.pin_dir).links().unwrap_or_default() {
        // A link whose interface went away, or that `bpftool link detach` cut, reads ifindex 0.
        let on = LinkState::of_entry(&link).is_ok_and(|s| s.ifindex != 0);
        attached
            .get_or_create(&AttachLabels {
                interface: link.interface.clone(),
                hook: link.mode.hook().to_owned(),
                mode: link.mode.name().to_owned(),
            })
            .set(i64::from(on));
    }
    registry.register(
        "filter_attached",
        "1 while the filter's pinned attachment is on the interface, 0 once it is not; hook xdp, or tc where another program holds XDP outside libxdp's protocol (mode tcx or clsact)",
        attached,
    );

    let allowed = |ip| state.store.allows(ip);
    match state.view.listener_audit(&allowed).await {
        Ok(audit) => {
            let exposed = Family::<ListenerLabels, Gauge>::default();
            for listener in audit.reachable() {
                exposed
                    .get_or_create(&ListenerLabels {
                        protocol: listener.protocol.name().to_owned(),
                        port: listener.port.to_string(),
                        process: listener
                            .owners
                            .first()
                            .map_or("unknown", |p| p.name())
                            .to_owned(),
                    })
                    .inc();
            }
            registry.register(
                "exposed_listeners",
                "Sockets listening beyond loopback that a source outside the allow-list reaches now (in audit mode: all of them), by protocol, port and owner process",
                exposed,
            );
            let at_risk = Gauge::<i64>::default();
            at_risk.set(i64::try_from(audit.sessions_at_risk.len()).unwrap_or(i64::MAX));
            registry.register(
                "sessions_at_risk",
                "Established inbound TCP sessions from outside the allow-list to a port that is not open: the port rules refuse that peer's new connections (guarded) or cut the session (strict)",
                at_risk,
            );
        }
        // Left out, not zero: a scrape must not report "nothing exposed" when it could not look.
        Err(e) => tracing::warn!("metrics: cannot audit the listeners: {e}"),
    }

    registry.register(
        "build",
        "The agent's version and mode",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: state.view.mode().name().to_owned(),
        }),
    );
}

/// `[cloud]`: where the entries come from, how old the cloud's answer is, how its refresh goes.
fn register_cloud(
    registry: &mut Registry,
    cloud: &crate::store::CloudStatus,
    listing: &crate::store::Summary,
) {
    let gauge = |value: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        g
    };
    let by_source = Family::<SourceLabel, Gauge>::default();
    for (source, count) in [("file", listing.from_file), ("cloud", listing.from_cloud)] {
        by_source
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "cidrs_by_source",
        "Entries of the allow-list by where they come from (an entry in both counts in both)",
        by_source,
    );
    let now = crate::store::unix_now();
    registry.register(
        "cloud_answer_timestamp_seconds",
        "Unix time of the cloud's answer in force (0: the cloud never answered on this node)",
        gauge(cloud.fetched_unix.unwrap_or(0)),
    );
    if let Some(age) = cloud.age_secs(now) {
        registry.register(
            "cloud_answer_age_seconds",
            "Age of the cloud's answer in force: grows while refreshes fail",
            gauge(age),
        );
    }
    registry.register(
        "cloud_refresh_ok",
        "1 when the last refresh from the cloud succeeded, 0 when it failed (the last good list stays)",
        gauge(u64::from(cloud.last_error.is_none() && cloud.fetched_unix.is_some())),
    );
    let errors = Counter::<u64>::default();
    errors.inc_by(cloud.errors);
    registry.register(
        "cloud_refresh_errors",
        "Refreshes from the cloud that failed or were refused since the agent started",
        errors,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}
