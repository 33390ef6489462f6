//! Starts the CIDR store, the file watcher, the control socket and the metrics endpoint as agent
//! subsystems. Called once from `agent::start_subsystems`, after the filter is attached.

use super::handle::AgentHandle;
use super::{AgentContext, AgentError, Subsystems};
use crate::control::agent_view::AgentView;
use crate::control::server::{ControlServer, ControlState};
use crate::follow::Watcher;
use crate::metrics::{MetricsServer, MetricsState};
use crate::store::{SharedSink, Store};
use crate::token::TokenSource;
use std::convert::Infallible;
use std::sync::Arc;

fn failed(name: &'static str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Subsystem {
        name,
        detail: e.to_string(),
    }
}

/// Opens the store, makes the maps hold its list, then starts watcher, control socket and
/// metrics. `tokens` is the public-mode token source the proxy follows (`None` in private mode),
/// so `POST /v1/token/reload` reaches the proxy.
pub async fn start(
    ctx: &AgentContext,
    subsystems: &mut Subsystems,
    tokens: Option<Arc<TokenSource>>,
) -> Result<Arc<Store>, AgentError> {
    let config = Arc::clone(&ctx.config);
    let store = {
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || {
            Store::open_with(&config.cidr_file, &config.state_dir, config.cloud.is_some())
        })
        .await
        .map_err(|e| failed("CIDR store", e))?
        .map_err(|e| failed("CIDR store", e))?
    };
    let store = Arc::new(store);
    store.set_file_allows_everyone(config.allow_everyone);
    store.set_capacity(ctx.filter.lock().await.capacity());

    // The filter was filled from the file a moment ago; if the file changed since, the store's
    // reading wins, so the maps and the recorded revision agree from the start.
    {
        let mut filter = ctx.filter.lock().await;
        let list = store.list();
        if filter.cidrs().ok().as_ref() != Some(&list) {
            filter
                .apply_cidrs(&list)
                .map_err(|e| failed("CIDR store", e))?;
        }
    }
    let sink: SharedSink = ctx.filter.clone();
    store.attach_sink(sink);

    let watcher = Watcher::start(Arc::clone(&store)).map_err(|e| failed("CIDR watcher", e))?;
    subsystems.spawn(
        "CIDR watcher",
        watcher.run(ctx.shutdown.clone().cancelled_owned()),
    );
    // An edit made between opening the store and starting the watch is picked up here.
    let _ = store.reload_from_disk().await;

    if let Some(cloud) = &config.cloud {
        subsystems.spawn(
            "cloud refresh",
            super::cloud_refresh::run(
                Arc::clone(&store),
                cloud.clone(),
                config.allow_everyone,
                ctx.shutdown.clone(),
            ),
        );
    }

    let view: Arc<dyn AgentView> = Arc::new(AgentHandle {
        config: Arc::clone(&config),
        filter: ctx.filter.clone(),
        ports: Arc::clone(&ctx.ports),
        tokens,
    });
    let control = ControlServer::bind(
        &config.control_socket,
        ControlState {
            store: Arc::clone(&store),
            view: Arc::clone(&view),
            started_at: ctx.started_at,
        },
    )
    .await
    .map_err(|e| failed("control socket", e))?;
    let shutdown = ctx.shutdown.clone();
    subsystems.spawn("control socket", async move {
        control.serve(shutdown.cancelled_owned()).await;
        Ok::<(), Infallible>(())
    });

    let ready = ctx.ready.clone();
    let metrics = MetricsServer::bind(
        config.metrics.listen,
        MetricsState {
            store: Arc::clone(&store),
            view,
            ready: Arc::new(move || ready.is_ready()),
            pin_dir: config.pin_dir.clone(),
        },
    )
    .await
    .map_err(|e| failed("metrics endpoint", e))?;
    let shutdown = ctx.shutdown.clone();
    subsystems.spawn("metrics endpoint", async move {
        metrics.serve(shutdown.cancelled_owned()).await;
        Ok::<(), Infallible>(())
    });
    Ok(store)
}
