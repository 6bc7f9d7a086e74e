//! A TCP relay on loopback in front of the bed's kube-apiserver that a test can take down and
//! bring back, as an apiserver restart looks to a client: while down, every open connection is
//! cut and new ones are closed at once. TLS passes through untouched (the apiserver's
//! certificate names 127.0.0.1). Stopped when dropped.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct OutageProxy {
    addr: SocketAddr,
    down: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OutageProxy {
    /// Relays to `upstream` (`https://host:port`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let target = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse::<SocketAddr>()
            .with_context(|| format!("{upstream} is not https://ip:port"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (down, watch_down) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watch_down.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, target, watch_down.clone()));
            }
        });
        Ok(Self { addr, down, task })
    }

    /// The URL clients use instead of the apiserver's.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones (`true`), or serves again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, mut down: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = down.wait_for(|d| *d) => {}
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.down.send_replace(true);
    }
}
