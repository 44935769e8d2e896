//! A proxy a test can cut: stands between deckhand and a dependency (moto over TCP,
//! Docker over its unix socket) to simulate an outage without stopping the shared
//! service that other tests use. While down, it drops open connections and refuses
//! new ones by closing them at once.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    down: watch::Sender<bool>,
    accept: JoinHandle<()>,
    pub address: String,
}

impl Proxy {
    /// `http://127.0.0.1:<port>` in front of `upstream` (`host:port`).
    pub async fn tcp(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (down, watch) = watch::channel(false);
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let watch = watch.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        forward(client, server, watch).await;
                    }
                });
            }
        });
        Proxy {
            down,
            accept,
            address,
        }
    }

    /// A unix socket at `path` in front of the socket at `upstream`.
    pub async fn unix(path: &Path, upstream: &Path) -> Proxy {
        let listener = UnixListener::bind(path).unwrap();
        let (down, watch) = watch::channel(false);
        let upstream: PathBuf = upstream.to_owned();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let watch = watch.clone();
                tokio::spawn(async move {
                    if let Ok(server) = UnixStream::connect(&upstream).await {
                        forward(client, server, watch).await;
                    }
                });
            }
        });
        Proxy {
            down,
            accept,
            address: path.display().to_string(),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_down(true);
    }
}

async fn forward<A, B>(mut client: A, mut server: B, mut down: watch::Receiver<bool>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if *down.borrow() {
        return;
    }
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = down.wait_for(|down| *down) => {}
    }
}
