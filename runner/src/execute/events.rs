//! The kubelet's image pulls for a job pod, read from the pod's Events: while an image is
//! pulled the pod's status says only `ContainerCreating` (or `PodInitializing`), the Events say
//! `Pulling image "x"` and then how it went. Best effort: without the right to read Events, or
//! when their watch breaks, there are simply no such lines.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::runtime::watcher;

use super::trace::TraceWriter;

/// The line for one of the pod's Events, if it is about an image (pure): `<container>:
/// <the kubelet's message>`, e.g. `build: Pulling image "busybox:1"`, `build: Successfully
/// pulled image "busybox:1" in 1.2s ...`, `build: Container image "busybox:1" already present on
/// machine`. Failed pulls are not here: the pod's status has them and ends the job.
pub fn image_line(event: &Event) -> Option<String> {
    let reason = event.reason.as_deref()?;
    if !matches!(reason, "Pulling" | "Pulled") {
        return None;
    }
    let message = event.message.as_deref()?.trim();
    if message.is_empty() {
        return None;
    }
    let container = event
        .involved_object
        .field_path
        .as_deref()
        .and_then(container_of);
    Some(match container {
        Some(c) => format!("{c}: {message}"),
        None => message.to_string(),
    })
}

/// The container an Event's `fieldPath` names: `spec.containers{build}` → `build`.
fn container_of(field_path: &str) -> Option<&str> {
    let (_, rest) = field_path.split_once('{')?;
    rest.strip_suffix('}').filter(|c| !c.is_empty())
}

/// Writes the image lines of pod `name`'s Events into the trace, each once, until aborted.
pub(super) async fn follow_image_pulls(events: Api<Event>, name: String, trace: TraceWriter) {
    let config = watcher::Config::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={name}"
    ));
    let stream = watcher(events, config);
    let mut stream = std::pin::pin!(stream);
    let mut told = BTreeSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => e,
            Ok(_) => continue,
            Err(e) => {
                // No right to read Events, or the watch broke: the pod's own status still
                // tells its progress.
                tracing::debug!(pod = %name, error = %e, "not following the pod's events");
                return;
            }
        };
        if let Some(line) = image_line(&event)
            && told.insert(line.clone())
        {
            trace.info(&line).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(reason: &str, field_path: Option<&str>, message: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": field_path},
            "reason": reason,
            "message": message,
        }))
        .unwrap()
    }

    #[test]
    fn image_pulls_are_told_with_their_container() {
        assert_eq!(
            image_line(&event(
                "Pulling",
                Some("spec.containers{build}"),
                "Pulling image \"busybox:1\""
            ))
            .as_deref(),
            Some("build: Pulling image \"busybox:1\"")
        );
        assert_eq!(
            image_line(&event(
                "Pulled",
                Some("spec.initContainers{keyhole-broker}"),
                "Container image \"keyhole.local/broker:dev\" already present on machine"
            ))
            .as_deref(),
            Some(
                "keyhole-broker: Container image \"keyhole.local/broker:dev\" already present on machine"
            )
        );
        assert_eq!(
            image_line(&event(
                "Pulled",
                None,
                "Successfully pulled image \"x\" in 1s"
            ))
            .as_deref(),
            Some("Successfully pulled image \"x\" in 1s")
        );
    }

    #[test]
    fn other_events_are_not_image_lines() {
        for reason in [
            "Scheduled",
            "Created",
            "Started",
            "Failed",
            "BackOff",
            "Killing",
        ] {
            assert_eq!(
                image_line(&event(reason, Some("spec.containers{build}"), "x")),
                None
            );
        }
        assert_eq!(image_line(&event("Pulling", None, " ")), None);
    }
}
