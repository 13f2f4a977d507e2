//! The TLS stack against an in-process rustls server on loopback, with
//! certificates made at test time (rcgen, ring).
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::*;

/// A certificate and its key, as PEM files in the test's directory.
#[derive(Clone)]
pub(crate) struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

/// Every certificate a test needs, under a fresh temporary directory.
pub(crate) struct Pki {
    pub dir: PathBuf,
    /// The trusted CA (`tls_cacertfile`).
    pub ca: Pem,
    /// Signed by `ca`, for `localhost` and `127.0.0.1`.
    pub server: Pem,
    /// Signed by `ca`, for `other.example` only.
    pub other_name: Pem,
    /// Signed by an untrusted CA, for `localhost` and `127.0.0.1`.
    pub untrusted: Pem,
    /// A client certificate signed by `ca`.
    pub client: Pem,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    pub(crate) fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "yggdrasil-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = make_ca("Yggdrasil test CA");
        let other_ca = make_ca("Someone else's CA");
        let write = |name: &str, cert: String, key: &KeyPair, der: CertificateDer<'static>| {
            let cert_path = dir.join(format!("{name}.pem"));
            let key_path = dir.join(format!("{name}-key.pem"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            Pem {
                cert: cert_path,
                key: key_path,
                cert_der: der,
                key_der: key.serialize_der(),
            }
        };
        let leaf = |name: &str, sans: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, issuer).unwrap();
            write(name, cert.pem(), &key, cert.der().clone())
        };
        let ca_pem = {
            let path = dir.join("ca.pem");
            std::fs::write(&path, ca.pem()).unwrap();
            Pem {
                cert: path.clone(),
                key: path,
                cert_der: ca.der().clone(),
                key_der: Vec::new(),
            }
        };
        Pki {
            server: leaf("server", &["localhost", "127.0.0.1"], &ca),
            other_name: leaf("other", &["other.example"], &ca),
            untrusted: leaf("untrusted", &["localhost", "127.0.0.1"], &other_ca),
            client: leaf("client", &["yggdrasil-client"], &ca),
            ca: ca_pem,
            dir,
        }
    }

    pub(crate) fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Settings trusting our CA.
    pub(crate) fn trusting(&self, verify: Verify) -> TlsSettings {
        TlsSettings {
            cacertfile: Some(self.ca.cert.clone()),
            verify,
            ..TlsSettings::default()
        }
    }
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server config presenting `pem`; requiring a client certificate signed
/// by `client_ca` when given.
pub(crate) fn server_config(pem: &Pem, client_ca: Option<&Pem>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert_der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::try_from(pem.key_der.clone()).unwrap();
    Arc::new(
        builder
            .with_single_cert(vec![pem.cert_der.clone()], key)
            .unwrap(),
    )
}

/// What the server saw of one connection.
#[derive(Debug)]
pub(crate) struct Seen {
    sni: Option<String>,
    client_certificate: bool,
}

/// A fake peer on a free loopback port: `serve` gets the one connection it
/// accepts. The unit tests' servers, well-behaved or not, are made of it.
pub(crate) async fn one_connection<F, T>(
    serve: impl FnOnce(TcpStream) -> F + Send + 'static,
) -> (u16, JoinHandle<T>)
where
    F: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(tcp).await
    });
    (port, task)
}

/// A one-connection TLS echo server on 127.0.0.1: after the handshake it
/// reads 4 bytes and answers them reversed.
pub(crate) async fn tls_server(
    config: Arc<ServerConfig>,
) -> (u16, JoinHandle<Result<Seen, String>>) {
    one_connection(move |tcp| async move {
        let mut tls = TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        let seen = Seen {
            sni: session.server_name().map(str::to_string),
            client_certificate: session.peer_certificates().is_some_and(|c| !c.is_empty()),
        };
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        buf.reverse();
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let _ = tls.shutdown().await;
        Ok(seen)
    })
    .await
}

async fn ping(stream: &mut Stream) -> Result<[u8; 4], String> {
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Connects to a fresh server presenting `pem` and exchanges bytes.
async fn exchange(
    pem: &Pem,
    settings: &TlsSettings,
    host: &str,
) -> Result<(Seen, [u8; 4]), String> {
    let tls = Tls::new(settings, host).map_err(|e| e.to_string())?;
    let (port, server) = tls_server(server_config(pem, None)).await;
    let result = async {
        let mut stream = connect(host, port, Some(&tls)).await?;
        assert!(stream.is_tls());
        ping(&mut stream).await
    }
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server task ends")
        .unwrap();
    let answer = result?;
    Ok((seen?, answer))
}

#[tokio::test]
async fn trusted_chain_and_right_name_connect_and_bytes_flow() {
    let pki = Pki::new();
    for host in ["localhost", "127.0.0.1"] {
        let (seen, answer) = exchange(&pki.server, &pki.trusting(Verify::Peer), host)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(&answer, b"gnip");
        assert!(!seen.client_certificate);
        // SNI carries DNS names only, never addresses.
        let expected_sni = (host == "localhost").then(|| "localhost".to_string());
        assert_eq!(seen.sni, expected_sni);
    }
    let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost").unwrap();
    assert!(tls.verifies_peer());
    assert_eq!(tls.server_name(), "localhost");
}

#[tokio::test]
async fn an_untrusted_chain_is_refused_with_the_reason() {
    let pki = Pki::new();
    for verify in [Verify::Peer, Verify::ChainOnly] {
        let e = exchange(&pki.untrusted, &pki.trusting(verify), "localhost")
            .await
            .unwrap_err();
        assert!(
            e.starts_with(
                "TLS handshake with localhost failed: invalid peer certificate: UnknownIssuer"
            ),
            "{verify:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_wrong_name_is_refused_by_peer_but_not_by_chain_only() {
    let pki = Pki::new();
    let e = exchange(&pki.other_name, &pki.trusting(Verify::Peer), "localhost")
        .await
        .unwrap_err();
    assert!(
        e.starts_with("TLS handshake with localhost failed: invalid peer certificate: ")
            && e.contains("not valid for name"),
        "{e}"
    );
    let (_, answer) = exchange(
        &pki.other_name,
        &pki.trusting(Verify::ChainOnly),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(&answer, b"gnip");
    assert!(!Tls::new(&pki.trusting(Verify::ChainOnly), "h")
        .unwrap()
        .verifies_peer());
}

#[tokio::test]
async fn verify_none_accepts_any_certificate() {
    let pki = Pki::new();
    let none = TlsSettings {
        verify: Verify::None,
        ..TlsSettings::default()
    };
    for pem in [&pki.untrusted, &pki.other_name, &pki.server] {
        let (_, answer) = exchange(pem, &none, "localhost").await.unwrap();
        assert_eq!(&answer, b"gnip");
    }
    // A CA file given with it is still checked, and the mode stays None.
    let tls = Tls::new(&pki.trusting(Verify::None), "localhost").unwrap();
    assert!(!tls.verifies_peer());
    assert_eq!(tls.verify(), Verify::None);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let pki = Pki::new();
    let with_cert = TlsSettings {
        certfile: Some(pki.client.cert.clone()),
        keyfile: Some(pki.client.key.clone()),
        ..pki.trusting(Verify::Peer)
    };
    let tls = Tls::new(&with_cert, "localhost").unwrap();
    let (port, server) = tls_server(server_config(&pki.server, Some(&pki.ca))).await;
    let mut stream = connect("localhost", port, Some(&tls)).await.unwrap();
    assert_eq!(&ping(&mut stream).await.unwrap(), b"gnip");
    let seen = server.await.unwrap().unwrap();
    assert!(seen.client_certificate);

    // Without one the server refuses (in TLS 1.3 the client learns it at
    // its first read).
    let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost").unwrap();
    let (port, server) = tls_server(server_config(&pki.server, Some(&pki.ca))).await;
    let result = async {
        let mut stream = connect("localhost", port, Some(&tls)).await?;
        ping(&mut stream).await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
    let e = server.await.unwrap().unwrap_err();
    assert!(e.contains("peer sent no certificates"), "{e}");
}

#[tokio::test]
async fn server_name_overrides_the_host_for_sni_and_the_check() {
    let pki = Pki::new();
    let settings = TlsSettings {
        server_name: Some("other.example".into()),
        ..pki.trusting(Verify::Peer)
    };
    let (seen, answer) = exchange(&pki.other_name, &settings, "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(&answer, b"gnip");
    assert_eq!(seen.sni.as_deref(), Some("other.example"));
    // And the overriding name is what is checked.
    let e = exchange(&pki.server, &settings, "localhost")
        .await
        .unwrap_err();
    assert!(
        e.starts_with("TLS handshake with other.example failed: "),
        "{e}"
    );
    // An IPv6 host, bracketed or not, is a valid name to check.
    for host in ["::1", "[::1]"] {
        let tls = Tls::new(&pki.trusting(Verify::Peer), host).unwrap();
        assert_eq!(tls.server_name(), "::1");
    }
}

#[tokio::test]
async fn tls_to_a_plaintext_server_fails_cleanly_and_in_bounded_time() {
    let pki = Pki::new();
    let tls = Tls::new(&pki.trusting(Verify::Peer), "localhost")
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(500));

    // A server that answers in its own protocol (a Redis error line) and closes.
    let (port, server) = one_connection(|mut tcp| async move {
        let mut buf = [0u8; 512];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(b"-ERR unknown command\r\n").await;
    })
    .await;
    let started = Instant::now();
    let e = connect("localhost", port, Some(&tls)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
    assert!(
        e.starts_with("TLS handshake with localhost failed: ") && e.contains("TLS port?"),
        "{e}"
    );
    server.await.unwrap();

    // A server that waits for its own protocol and never answers.
    let (port, server) = one_connection(|mut tcp| async move {
        // Until the client gives up and closes its socket.
        let mut buf = [0u8; 512];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let started = Instant::now();
    let e = connect("localhost", port, Some(&tls)).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        e,
        "TLS handshake with localhost failed: no answer within 500ms (is it a TLS port?)"
    );
    // The abandoned socket was closed: the server sees EOF.
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("the client closed its socket")
        .unwrap();
}

#[tokio::test]
async fn plain_and_refused_connections() {
    let (port, server) = one_connection(|mut tcp| async move {
        let mut buf = [0u8; 4];
        tcp.read_exact(&mut buf).await.unwrap();
        tcp.write_all(b"pong").await.unwrap();
    })
    .await;
    let mut stream = connect("127.0.0.1", port, None).await.unwrap();
    assert!(!stream.is_tls());
    assert_eq!(&ping(&mut stream).await.unwrap(), b"pong");
    server.await.unwrap();
    drop(stream);

    // Nothing listens there any more.
    let e = connect("127.0.0.1", port, None).await.unwrap_err();
    assert_eq!(e, format!("127.0.0.1:{port}: Connection refused"));
    let e = connect("::1", port, None).await.unwrap_err();
    assert!(e.starts_with(&format!("[::1]:{port}: ")), "{e}");
}

fn error(settings: &TlsSettings) -> String {
    Tls::new(settings, "localhost").unwrap_err().to_string()
}

#[test]
fn every_bad_file_value_names_its_key() {
    let pki = Pki::new();
    let missing = pki.dir.join("missing.pem");
    let text = pki.file("text.pem", "just some text\n");
    let truncated = pki.file("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    let quoted = |p: &Path| format!("{p:?}");

    let e = error(&TlsSettings {
        cacertfile: Some(missing.clone()),
        ..TlsSettings::default()
    });
    assert_eq!(
        e,
        format!(
            "tls_cacertfile: cannot read {}: No such file or directory",
            quoted(&missing)
        )
    );
    for not_a_cert in [&text, &pki.client.key] {
        let e = error(&TlsSettings {
            cacertfile: Some(not_a_cert.clone()),
            ..TlsSettings::default()
        });
        assert_eq!(
            e,
            format!(
                "tls_cacertfile: {} holds no PEM certificate",
                quoted(not_a_cert)
            )
        );
    }
    let e = error(&TlsSettings {
        cacertfile: Some(truncated.clone()),
        ..TlsSettings::default()
    });
    assert!(
        e.starts_with(&format!(
            "tls_cacertfile: {} is not valid PEM: ",
            quoted(&truncated)
        )),
        "{e}"
    );
    // Checked even when nothing is verified.
    let e = error(&TlsSettings {
        cacertfile: Some(missing.clone()),
        verify: Verify::None,
        ..TlsSettings::default()
    });
    assert!(e.starts_with("tls_cacertfile: cannot read "), "{e}");

    let pair = |cert: &Path, key: &Path| TlsSettings {
        certfile: Some(cert.to_path_buf()),
        keyfile: Some(key.to_path_buf()),
        ..pki.trusting(Verify::Peer)
    };
    assert_eq!(
        error(&pair(&missing, &pki.client.key)),
        format!(
            "tls_certfile: cannot read {}: No such file or directory",
            quoted(&missing)
        )
    );
    assert_eq!(
        error(&pair(&text, &pki.client.key)),
        format!("tls_certfile: {} holds no PEM certificate", quoted(&text))
    );
    assert_eq!(
        error(&pair(&pki.client.cert, &missing)),
        format!(
            "tls_keyfile: cannot read {}: No such file or directory",
            quoted(&missing)
        )
    );
    for no_key in [&text, &pki.client.cert] {
        assert_eq!(
            error(&pair(&pki.client.cert, no_key)),
            format!("tls_keyfile: {} holds no private key", quoted(no_key))
        );
    }
    // A key that is not the certificate's.
    let e = error(&pair(&pki.client.cert, &pki.server.key));
    assert!(e.starts_with("tls_keyfile: "), "{e}");
    assert!(e.contains("does not fit tls_certfile"), "{e}");

    for half in [
        TlsSettings {
            certfile: Some(pki.client.cert.clone()),
            ..TlsSettings::default()
        },
        TlsSettings {
            keyfile: Some(pki.client.key.clone()),
            ..TlsSettings::default()
        },
    ] {
        assert_eq!(error(&half), "tls_certfile and tls_keyfile go together");
    }

    for bad in ["bad name!", "", "a..b"] {
        let e = error(&TlsSettings {
            server_name: Some(bad.into()),
            ..pki.trusting(Verify::Peer)
        });
        assert_eq!(
            e,
            format!("tls_server_name: {bad:?} is not a valid DNS name or IP address")
        );
    }
    let e = Tls::new(&pki.trusting(Verify::Peer), "bad host!").unwrap_err();
    assert!(e.to_string().contains("set tls_server_name"), "{e}");

    // A CA file with several certificates (a bundle) is fine.
    let bundle = pki.file(
        "bundle.pem",
        &format!(
            "{}{}",
            std::fs::read_to_string(&pki.ca.cert).unwrap(),
            std::fs::read_to_string(&pki.untrusted.cert).unwrap()
        ),
    );
    assert!(Tls::new(
        &TlsSettings {
            cacertfile: Some(bundle),
            ..TlsSettings::default()
        },
        "localhost"
    )
    .is_ok());
}

#[test]
fn the_system_trust_store_is_used_without_a_ca_file() {
    // Depends on the machine: either roots are found, or the error says
    // what to do.
    match Tls::new(&TlsSettings::default(), "example.com") {
        Ok(tls) => assert!(tls.verifies_peer()),
        Err(e) => assert!(e.to_string().contains("set tls_cacertfile"), "{e}"),
    }
}

#[test]
fn debug_shows_no_key_material() {
    let pki = Pki::new();
    let tls = Tls::new(
        &TlsSettings {
            certfile: Some(pki.client.cert.clone()),
            keyfile: Some(pki.client.key.clone()),
            ..pki.trusting(Verify::Peer)
        },
        "localhost",
    )
    .unwrap();
    assert_eq!(
        format!("{tls:?}"),
        "Tls { server_name: DnsName(\"localhost\"), verify: Peer, .. }"
    );
}

/// Whether a broker binary is there; when it is not, the test is skipped
/// only with `YGG_SKIP_BROKERS=1` (as the broker test suites do).
pub(crate) fn have(binary: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("YGG_SKIP_BROKERS").as_deref() != Ok("1") {
        panic!("{binary} not installed: install it or set YGG_SKIP_BROKERS=1");
    }
    found
}

/// A port nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its own pid) when dropped.
pub(crate) struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
