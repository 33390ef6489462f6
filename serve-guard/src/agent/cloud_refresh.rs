//! `[cloud]`: asks the cloud for the VPC's ranges at start and every `refresh_interval`, and
//! hands each answer to the store, which checks it whole and applies it without a gap. A
//! failure (the metadata service down, slow, throttling, answering garbage) changes nothing: it
//! is logged, counted and shown, and the last good list stays in force.

use crate::cloud::{self, Discovery};
use crate::config::cloud::CloudConfig;
use crate::store::{CloudAnswer, Store};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`; never fails: a refresh that fails leaves the list as it is.
pub async fn run(
    store: Arc<Store>,
    config: CloudConfig,
    allow_everyone: bool,
    shutdown: CancellationToken,
) -> Result<(), Infallible> {
    store.set_cloud_refresh_interval(config.refresh_interval);
    let mut provider = config.provider.pinned();
    let mut warned: Vec<String> = Vec::new();
    // Built once: the CA bundle is not read again at every refresh.
    let api = cloud::ApiClient::new(config.request_timeout);
    let mut ticker = tokio::time::interval(config.refresh_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            asked = cloud::discover(&config, provider, &api) => asked,
        };
        match asked {
            Ok(discovery) => {
                // Detected once; a node does not change clouds.
                provider = Some(discovery.provider);
                if discovery.warnings != warned {
                    for w in &discovery.warnings {
                        tracing::warn!("{w}");
                    }
                    warned.clone_from(&discovery.warnings);
                }
                apply(&store, discovery, allow_everyone).await;
            }
            Err(e) => {
                store.record_cloud_error(&e.to_string());
                tracing::warn!(
                    "asking the cloud for the VPC's ranges failed, the last good list stays: {e}"
                );
            }
        }
    }
}

async fn apply(store: &Arc<Store>, discovery: Discovery, allow_everyone: bool) {
    let answer = CloudAnswer {
        provider: discovery.provider,
        list: discovery.list(),
        warnings: discovery.warnings,
    };
    let store = Arc::clone(store);
    // File I/O and map updates: off the async workers.
    let applied =
        tokio::task::spawn_blocking(move || store.apply_cloud(answer, allow_everyone)).await;
    match applied {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("the cloud's answer was not applied: {e}"),
        Err(e) => tracing::error!("applying the cloud's answer failed: {e}"),
    }
}
