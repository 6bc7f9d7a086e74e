//! Service readiness: the job's script starts only once each of its services accepts TCP
//! connections on one of its ports, or once the wait timed out (with a warning in the trace,
//! as gitlab-runner's "probably didn't start properly"). The broker does the probing because it
//! shares the pod's loopback with the services and already writes to the trace; the script
//! waits on [`keyhole_contract::GATE_FIFO`], which the broker opens once it is done.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;

use keyhole_contract::ServiceWait;

/// How often a port that refused is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long one connection attempt may take (loopback answers at once unless a firewall
/// drops packets; then the attempt is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How one service's wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `port` accepted a connection after `after`.
    Ready { port: u16, after: Duration },
    /// None of the ports accepted a connection before the timeout.
    TimedOut,
    /// The job ended (SIGTERM or its script's end) before the service answered.
    Stopped,
}

/// Probes every service's ports on `127.0.0.1` until one port each accepts, `timeout` passes,
/// or `stop` turns true. Services are waited for at the same time, so the longest wait bounds
/// the job's start, not their sum.
pub async fn wait_for_services(
    waits: &[ServiceWait],
    timeout: Duration,
    stop: watch::Receiver<bool>,
) -> Vec<Readiness> {
    let started = Instant::now();
    let probes = waits
        .iter()
        .map(|w| wait_for_one(&w.ports, started, timeout, stop.clone()));
    futures::future::join_all(probes).await
}

async fn wait_for_one(
    ports: &[u16],
    started: Instant,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Readiness {
    let probe = async {
        loop {
            for &port in ports {
                if accepts(port).await {
                    return Readiness::Ready {
                        port,
                        after: started.elapsed(),
                    };
                }
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    };
    tokio::select! {
        ready = tokio::time::timeout(timeout, probe) => ready.unwrap_or(Readiness::TimedOut),
        () = crate::termination::stopped(&mut stop) => Readiness::Stopped,
    }
}

async fn accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

/// The trace lines for the waits' outcomes, in the job's order.
pub fn report(waits: &[ServiceWait], outcomes: &[Readiness], timeout: Duration) -> Vec<String> {
    waits
        .iter()
        .zip(outcomes)
        .map(|(w, outcome)| match outcome {
            Readiness::Ready { port, after } => format!(
                "keyhole-broker: service {} is ready (port {port} accepted a connection after {:.1} s)",
                w.name,
                after.as_secs_f64()
            ),
            Readiness::TimedOut => format!(
                "keyhole-broker: *** WARNING: Service {} probably didn't start properly: no \
                 connection to 127.0.0.1 port {} within {} s (wait_for_services_timeout); the \
                 job starts anyway",
                w.name,
                ports_text(&w.ports),
                timeout.as_secs()
            ),
            Readiness::Stopped => format!(
                "keyhole-broker: the job ended while waiting for service {}",
                w.name
            ),
        })
        .collect()
}

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The line announcing the wait, before it starts.
pub fn announce(waits: &[ServiceWait], timeout: Duration) -> String {
    let names: Vec<String> = waits
        .iter()
        .map(|w| format!("{} (port {})", w.name, ports_text(&w.ports)))
        .collect();
    format!(
        "keyhole-broker: waiting for services to be up and running (timeout {} s): {}",
        timeout.as_secs(),
        names.join(", ")
    )
}

/// Waits until the job's script is at its gate: blocked reading the FIFO. The open is
/// non-blocking (`ENXIO` while no reader is there) and retried, so the broker never waits on a
/// thread for a script that may never come (its container failed to start, the job was
/// canceled): `stop` ends the retries with `None`. The script reaches its gate when the job's
/// containers start, services included, so the services' timeout counts from there, not from
/// when the broker became ready (the kubelet may take seconds to start them after that).
pub async fn script_at_the_gate(
    fifo: &Path,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(file) => return Ok(Some(file)),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(GATE_RETRY_EVERY) => {}
            () = crate::termination::stopped(&mut stop) => return Ok(None),
        }
    }
}

/// Lets the script past its gate: one line ends its `read`.
pub fn open_gate(mut gate: std::fs::File) -> std::io::Result<()> {
    std::io::Write::write_all(
        &mut gate,
        format!("{}\n", keyhole_contract::GATE_OPEN).as_bytes(),
    )
}

/// How often the gate is tried while the script has not reached it yet.
const GATE_RETRY_EVERY: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(name: &str, ports: &[u16]) -> ServiceWait {
        ServiceWait {
            name: name.into(),
            ports: ports.to_vec(),
        }
    }

    /// A port nothing listens on: bound, then closed, so the kernel just freed it.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_late_service_is_waited_for_and_a_silent_one_times_out_with_a_warning() {
        let late = closed_port();
        let silent = closed_port();
        let listener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", late))
                .await
                .unwrap();
            let _ = l.accept().await;
        });
        let waits = [wait("web", &[silent, late]), wait("db", &[silent])];
        let (_tx, rx) = watch::channel(false);
        let outcomes = wait_for_services(&waits, Duration::from_secs(3), rx).await;
        match &outcomes[0] {
            Readiness::Ready { port, after } => {
                assert_eq!(*port, late);
                assert!(*after >= Duration::from_millis(500), "{after:?}");
            }
            other => panic!("web: {other:?}"),
        }
        assert_eq!(outcomes[1], Readiness::TimedOut);
        let lines = report(&waits, &outcomes, Duration::from_secs(3));
        assert!(lines[0].contains("service web is ready"), "{lines:?}");
        assert!(
            lines[1].contains("*** WARNING: Service db probably didn't start properly")
                && lines[1].contains(&format!("port {silent} within 3 s")),
            "{lines:?}"
        );
        listener.await.unwrap();
    }

    #[tokio::test]
    async fn the_end_of_the_job_ends_the_wait() {
        let (tx, rx) = watch::channel(false);
        let waits = [wait("db", &[closed_port()])];
        let waiting =
            tokio::spawn(
                async move { wait_for_services(&waits, Duration::from_secs(600), rx).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), [Readiness::Stopped]);
    }

    #[tokio::test]
    async fn the_gate_waits_for_a_script_that_comes_late_and_gives_up_at_the_job_end() {
        let dir = std::env::temp_dir().join(format!("kh-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join(keyhole_contract::GATE_FIFO);
        crate::pump::create_fifo(&fifo, 0o640).unwrap();
        // The script: a blocking open and read, 200 ms after the broker started trying.
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut line = String::new();
                std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(std::fs::File::open(&fifo).unwrap()),
                    &mut line,
                )
                .unwrap();
                line
            }
        });
        let (tx, rx) = watch::channel(false);
        let gate = script_at_the_gate(&fifo, rx.clone())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !reader.is_finished(),
            "the script waits until the gate opens"
        );
        open_gate(gate).unwrap();
        assert_eq!(reader.join().unwrap(), "go\n");
        // No script at all: the job's end stops the retries.
        let gave_up = tokio::spawn(async move { script_at_the_gate(&fifo, rx).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
        assert!(gave_up.await.unwrap().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
