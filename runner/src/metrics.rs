//! Prometheus metrics and the health endpoints (`/healthz`, `/readyz`, `/metrics`) a
//! Deployment's probes and a ServiceMonitor use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// The runner's metrics. Cheap to clone; all clones update the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    jobs: Family<OutcomeLabel, Counter>,
    running: Gauge,
    job_duration: Histogram,
    pod_start: Histogram,
    gitlab_errors: Family<EndpointLabel, Counter>,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyhole_runner");
        let jobs = Family::<OutcomeLabel, Counter>::default();
        registry.register("jobs", "Jobs finished, by outcome", jobs.clone());
        let running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", running.clone());
        let job_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "job_duration_seconds",
            "Job duration from receipt to final state",
            job_duration.clone(),
        );
        let pod_start = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        registry.register(
            "pod_start_seconds",
            "Pod creation to the build container running (scheduling, image pull, secrets)",
            pod_start.clone(),
        );
        let gitlab_errors = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "gitlab_request_errors",
            "Failed GitLab API requests, by endpoint",
            gitlab_errors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            jobs,
            running,
            job_duration,
            pod_start,
            gitlab_errors,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn job_started(&self) {
        self.running.inc();
    }

    /// `outcome`: `success` or a GitLab failure reason.
    pub fn job_finished(&self, outcome: &str, duration: Duration) {
        self.running.dec();
        self.jobs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        self.job_duration.observe(duration.as_secs_f64());
    }

    pub fn pod_started(&self, latency: Duration) {
        self.pod_start.observe(latency.as_secs_f64());
    }

    pub fn gitlab_error(&self, endpoint: &str) {
        self.gitlab_errors
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.into(),
            })
            .inc();
    }

    /// Readiness: set once GitLab accepted the runner's token and the cluster answered.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready = metrics.clone();
    let scrape = metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = scrape.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_jobs_by_outcome_and_tracks_running() {
        let m = Metrics::new();
        m.job_started();
        m.job_started();
        m.job_finished("success", Duration::from_secs(3));
        m.job_finished("script_failure", Duration::from_secs(5));
        m.gitlab_error("jobs/request");
        let text = m.render();
        assert!(
            text.contains("keyhole_runner_jobs_total{outcome=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keyhole_runner_jobs_total{outcome=\"script_failure\"} 1"),
            "{text}"
        );
        assert!(text.contains("keyhole_runner_jobs_running 0"), "{text}");
        assert!(
            text.contains("keyhole_runner_job_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "keyhole_runner_gitlab_request_errors_total{endpoint=\"jobs/request\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_follows_the_flag() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        let server = tokio::spawn(serve(listener, m.clone()));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        m.set_ready(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("keyhole_runner_jobs_running"), "{body}");
        server.abort();
    }
}
