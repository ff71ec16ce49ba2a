//! Active health checks: every endpoint of the current config is asked `GET <health_path>` every
//! interval; a failed check takes it out of the balancing set, a good one brings it back (and
//! lifts a passive ejection). /readyz reads the result. A gateway's URL (`endpoint_picker:
//! gateway`) is not checked: the gateway answers for its pods, and only passive ejection applies.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::config::ms;
use crate::state::Shared;

/// Runs until the process ends; picks up config reloads at each round.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let rt = shared.current();
        let cfg = rt.upstream.config().clone();
        let timeout = ms(cfg.health_timeout_ms);
        let checks = rt
            .pools
            .all()
            .filter(|ep| !rt.cfg.picks_pods(&ep.model))
            .map(|ep| {
                let (upstream, path) = (&rt.upstream, &cfg.health_path);
                async move {
                    let ok = matches!(
                        tokio::time::timeout(timeout, upstream.check(ep, path)).await,
                        Ok(true)
                    );
                    ep.set_healthy(ok);
                }
            });
        join_all(checks).await;
        drop(rt);
        tokio::time::sleep(Duration::from_millis(cfg.health_interval_ms)).await;
    }
}
