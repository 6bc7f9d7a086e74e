//! One watch of a runner process's job pods in a namespace, shared by all of its jobs, instead
//! of a list and a watch per job pod: the apiserver serves one long-lived stream (a list when it
//! starts or its history expired, a watch request every few minutes) however many jobs run.
//! Each job subscribes to its pod's name before it creates the pod, so no event of it is
//! missed; events of pods no job follows (any more) are dropped.
//!
//! A job without a shared watch (`keyhole-runner exec`, one job) watches its own pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a job learns of its pod.
#[derive(Debug)]
pub(super) enum PodEvent {
    /// The pod as it is now.
    Applied(Box<Pod>),
    /// The pod is gone.
    Deleted,
    /// The watch failed; it retries (with backoff) by itself.
    Trouble(String),
    /// The watch ended for good.
    Ended,
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<PodEvent>>>>;

/// The shared watch of one namespace's job pods of this process. Cheap to clone; the watch
/// ends when the last clone (and the last subscription) is gone.
#[derive(Clone)]
pub struct PodWatch {
    routes: Routes,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch").finish_non_exhaustive()
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PodWatch {
    /// Starts watching the pods of `pods`' namespace that match `label_selector` (the
    /// process's own job pods: its instance label).
    pub fn start(pods: Api<Pod>, label_selector: &str) -> Self {
        let routes: Routes = Arc::default();
        let config = watcher::Config::default().labels(label_selector);
        let task = tokio::spawn(route(watcher(pods, config), routes.clone()));
        Self {
            routes,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// The events of the pod `name` from now on, until the subscription is dropped.
    pub(super) fn subscribe(&self, name: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.routes).insert(name.to_owned(), tx);
        Subscription {
            watch: self.clone(),
            name: name.to_owned(),
            rx,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Passes each event to the subscriber of its pod; watch errors to every subscriber.
async fn route(
    stream: impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    routes: Routes,
) {
    let stream = stream.default_backoff();
    let mut stream = std::pin::pin!(stream);
    let send = |name: Option<&String>, event: PodEvent| {
        if let Some(tx) = name.and_then(|n| lock(&routes).get(n).cloned()) {
            let _ = tx.send(event);
        }
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let name = pod.metadata.name.clone();
                send(name.as_ref(), PodEvent::Applied(Box::new(pod)));
            }
            Ok(watcher::Event::Delete(pod)) => send(pod.metadata.name.as_ref(), PodEvent::Deleted),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching the job pods failed; retrying");
                for tx in lock(&routes).values() {
                    let _ = tx.send(PodEvent::Trouble(e.to_string()));
                }
            }
        }
    }
    for tx in lock(&routes).values() {
        let _ = tx.send(PodEvent::Ended);
    }
}

/// One job's view of the shared watch: its pod's events.
pub(super) struct Subscription {
    watch: PodWatch,
    name: String,
    rx: mpsc::UnboundedReceiver<PodEvent>,
}

impl Subscription {
    pub(super) async fn next(&mut self) -> PodEvent {
        self.rx.recv().await.unwrap_or(PodEvent::Ended)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.watch.routes).remove(&self.name);
    }
}

/// A job's pod events: from the shared watch, or from a watch of its own.
pub(super) enum PodEvents {
    Shared(Subscription),
    Own(std::pin::Pin<Box<dyn futures::Stream<Item = PodEvent> + Send>>),
}

impl PodEvents {
    /// Subscribes to `name` on `shared`, or starts a watch of that one pod.
    pub(super) fn open(shared: Option<&PodWatch>, pods: &Api<Pod>, name: &str) -> Self {
        if let Some(w) = shared {
            return Self::Shared(w.subscribe(name));
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream =
            watcher(pods.clone(), config)
                .default_backoff()
                .filter_map(|event| async move {
                    match event {
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                            Some(PodEvent::Applied(Box::new(p)))
                        }
                        Ok(watcher::Event::Delete(_)) => Some(PodEvent::Deleted),
                        Ok(_) => None,
                        Err(e) => Some(PodEvent::Trouble(e.to_string())),
                    }
                });
        Self::Own(Box::pin(stream))
    }

    pub(super) async fn next(&mut self) -> PodEvent {
        match self {
            Self::Shared(s) => s.next().await,
            Self::Own(s) => s.next().await.unwrap_or(PodEvent::Ended),
        }
    }
}
