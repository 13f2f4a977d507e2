//! Placeholder of the TLS stack (the `tls` branch replaces this file).
use std::path::PathBuf;

use tokio::net::TcpStream;

use crate::Error;

pub enum Verify {
    Peer,
    ChainOnly,
    None,
}

pub struct TlsSettings {
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub verify: Verify,
    pub server_name: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Tls;

impl Tls {
    pub(crate) fn new(_settings: &TlsSettings, _host: &str) -> Result<Tls, Error> {
        Err(Error::new("tls: not in this build yet"))
    }

    pub(crate) fn verifies_peer(&self) -> bool {
        true
    }
}

pub(crate) type Stream = TcpStream;

pub(crate) async fn connect(host: &str, port: u16, _tls: Option<&Tls>) -> Result<Stream, String> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| format!("{host}:{port}: no TCP connection within 10s"))?
    .map_err(|e| format!("{host}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
