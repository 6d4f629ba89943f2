//! Hostile peers and clients. Mutual TLS: handshakes over loopback TCP
//! with certificates made at run time (rcgen; no key is committed), and
//! replica clusters whose peers and clients must present a trusted
//! certificate. Resource limits: a flood of connections, slowloris and
//! greedy clients leaves well-behaved clients committing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::client::{Client, ClientError, ClientOptions};
use engine::core::{ClusterId, Config, ReplicaId, RoleKind, Slot};
use engine::kv::{KvOp, KvStore};
use engine::runtime::{self, NodeConfig, NodeHandle, StorageSpec};
use engine::transport::net::Network;
use engine::transport::tls::{Identity, Tls, TlsError, TlsSettings, Trust};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA made for one test.
struct Ca {
    cert: rcgen::Certificate,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            params: p,
            key,
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for 127.0.0.1 and localhost, valid now.
    fn issue(&self, name: &str) -> (String, String) {
        self.issue_with(name, |_| {})
    }

    fn issue_with(
        &self,
        name: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        edit(&mut p);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A self-signed certificate (for pinning).
fn self_signed(name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn tls(identity: &(String, String), cas: &[&Ca], pins: &[String]) -> Network {
    let id = Identity::from_pem(identity.0.as_bytes(), identity.1.as_bytes()).unwrap();
    let mut trust = Trust::default();
    for ca in cas {
        trust.add_ca_pem(ca.pem().as_bytes()).unwrap();
    }
    for p in pins {
        trust.pin_hex(p).unwrap();
    }
    Network::Tls(Arc::new(Tls::new(id, trust, None).unwrap()))
}

fn fingerprint(identity: &(String, String)) -> String {
    Identity::from_pem(identity.0.as_bytes(), identity.1.as_bytes())
        .unwrap()
        .fingerprint()
}

/// Connects `client` to a listener of `server` and sends a few bytes each
/// way: the server side's and the client side's outcome.
async fn exchange(server: &Network, client: &Network) -> (Result<(), String>, Result<(), String>) {
    let mut l = server.bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    let srv = tokio::spawn(async move {
        let (incoming, _) = l.accept().await.map_err(|e| e.to_string())?;
        let mut s = incoming.open().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"hello" {
            return Err(format!("read {buf:?}, not the client's bytes"));
        }
        s.write_all(b"world").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    });
    let cli = async {
        let mut s = client.connect(&addr).await.map_err(|e| e.to_string())?;
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"world" {
            return Err(format!("read {buf:?}, not the server's bytes"));
        }
        Ok::<(), String>(())
    };
    let c = tokio::time::timeout(Duration::from_secs(10), cli)
        .await
        .expect("the client side finishes");
    let s = tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .expect("the server side finishes")
        .unwrap();
    (s, c)
}

#[tokio::test]
async fn a_handshake_with_certificates_from_the_trusted_ca_succeeds() {
    let ca = Ca::new("cluster CA");
    let server = tls(&ca.issue("replica-1"), &[&ca], &[]);
    let client = tls(&ca.issue("client"), &[&ca], &[]);
    let (s, c) = exchange(&server, &client).await;
    assert_eq!(s, Ok(()));
    assert_eq!(c, Ok(()));
    // A plain TCP client gets nowhere with a TLS listener.
    let (s, c) = exchange(&server, &Network::Tcp).await;
    assert!(
        s.is_err() && c.is_err(),
        "plain TCP got through: {s:?} {c:?}"
    );
}

/// `e` is a TLS handshake failure naming `why`.
fn assert_handshake_refused(e: &str, why: &str) {
    assert!(e.contains("TLS handshake") && e.contains(why), "{e}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_either_way() {
    let good = Ca::new("cluster CA");
    let evil = Ca::new("someone else");
    let server = tls(&good.issue("replica-1"), &[&good], &[]);
    // A client whose certificate the listener does not trust.
    let (s, c) = exchange(&server, &tls(&evil.issue("client"), &[&good], &[])).await;
    let e = s.unwrap_err();
    assert_handshake_refused(&e, "UnknownIssuer");
    assert!(c.is_err(), "the client went on: {c:?}");
    // A listener whose certificate the client does not trust.
    let impostor = tls(&evil.issue("replica-1"), &[&good], &[]);
    let (_, c) = exchange(&impostor, &tls(&good.issue("client"), &[&good], &[])).await;
    let e = c.unwrap_err();
    assert_handshake_refused(&e, "UnknownIssuer");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_the_error_says_so() {
    let ca = Ca::new("cluster CA");
    let expired = ca.issue_with("old client", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let server = tls(&ca.issue("replica-1"), &[&ca], &[]);
    let (s, c) = exchange(&server, &tls(&expired, &[&ca], &[])).await;
    assert_handshake_refused(&s.unwrap_err(), "certificate expired");
    assert!(c.is_err());
}

#[tokio::test]
async fn pinned_fingerprints_accept_both_identities_of_a_rotation_and_nothing_else() {
    let (a, b, c) = (self_signed("a"), self_signed("b"), self_signed("c"));
    let pins = [fingerprint(&a), fingerprint(&b)];
    let server = tls(&a, &[], &pins);
    for (who, id) in [("a", &a), ("b", &b)] {
        let (s, cl) = exchange(&server, &tls(id, &[], &pins)).await;
        assert_eq!((s, cl), (Ok(()), Ok(())), "identity {who}");
    }
    let (s, _) = exchange(&server, &tls(&c, &[], &pins)).await;
    let e = s.unwrap_err();
    assert!(e.contains("not pinned"), "{e}");
    // Fingerprints are written with or without colons, in any case.
    let mut t = Trust::default();
    let colons: String = pins[0]
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    t.pin_hex(&colons).unwrap();
    assert!(matches!(t.pin_hex("abc"), Err(TlsError::Fingerprint(_))));
}

#[test]
fn settings_name_the_file_that_is_wrong() {
    let dir = std::env::temp_dir().join(format!("tls-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("cluster CA");
    let (cert, key) = ca.issue("replica-1");
    std::fs::write(dir.join("c.pem"), &cert).unwrap();
    std::fs::write(dir.join("k.pem"), &key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let mut s = TlsSettings {
        cert: dir.join("c.pem"),
        key: dir.join("k.pem"),
        ca: vec![dir.join("ca.pem")],
        ..TlsSettings::default()
    };
    s.load().expect("a good configuration loads");
    s.ca = vec![];
    assert!(matches!(s.load(), Err(TlsError::NoTrust)));
    s.ca = vec![dir.join("junk.pem")];
    let e = s.load().unwrap_err().to_string();
    assert!(e.contains("junk.pem"), "{e}");
    s.ca = vec![dir.join("missing.pem")];
    let e = s.load().unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Three in-memory replicas on loopback TCP, replica `i` on `networks[i]`.
async fn start_cluster(cluster: ClusterId, networks: &[Network]) -> Vec<NodeHandle> {
    start_cluster_with(cluster, networks, |_| {}).await
}

async fn start_cluster_with(
    cluster: ClusterId,
    networks: &[Network],
    configure: impl Fn(&mut NodeConfig),
) -> Vec<NodeHandle> {
    let addresses: Vec<(ReplicaId, String)> = (1..=networks.len() as u32)
        .map(|i| (ReplicaId(i), format!("127.0.0.1:{}", free_port())))
        .collect();
    let members: Vec<ReplicaId> = addresses.iter().map(|(id, _)| *id).collect();
    let mut nodes = Vec::new();
    for (i, net) in networks.iter().enumerate() {
        let id = ReplicaId(i as u32 + 1);
        let mut cfg = NodeConfig::new(Config::new(cluster, id, members.clone()), addresses.clone());
        configure(&mut cfg);
        let opened = runtime::open_storage(&StorageSpec::Mem, cluster, id, true).unwrap();
        let node = runtime::start(
            cfg,
            net.clone(),
            opened.storage,
            opened.state,
            KvStore::new(),
            opened.sync_thread,
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes
}

fn put(i: u32) -> Bytes {
    KvOp::Put {
        key: Bytes::from(format!("k{i}")),
        value: Bytes::from_static(b"v"),
    }
    .encode()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rotating_its_ca_runs_with_both_identities_live() {
    // Mid-rotation: replicas 1 and 2 still hold certificates of the old CA,
    // replica 3 and the client already hold the new one; everyone trusts
    // both.
    let (old, new) = (Ca::new("CA 2025"), Ca::new("CA 2026"));
    let both = [&old, &new];
    let networks = [
        tls(&old.issue("replica-1"), &both, &[]),
        tls(&old.issue("replica-2"), &both, &[]),
        tls(&new.issue("replica-3"), &both, &[]),
    ];
    let nodes = start_cluster(ClusterId(81), &networks).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.listen_addr().to_string()).collect();
    let client = Client::connect(
        tls(&new.issue("client"), &both, &[]),
        ClusterId(81),
        addrs,
        client_options(),
    )
    .await
    .unwrap();
    let mut last = Slot(0);
    for i in 0..50 {
        last = client.call(put(i)).await.unwrap().slot;
    }
    // Every replica, old identity or new, applies everything.
    for n in &nodes {
        wait_until("every replica applies the writes", || {
            n.status().applied >= last
        })
        .await;
    }
    client.close().await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_trusted_certificate_a_replica_cannot_vote_and_a_client_cannot_submit() {
    let (good, evil) = (Ca::new("cluster CA"), Ca::new("someone else"));
    // Replica 3 trusts the cluster's CA but holds a certificate nobody
    // trusts: it can neither reach its peers nor be reached by them.
    let networks = [
        tls(&good.issue("replica-1"), &[&good], &[]),
        tls(&good.issue("replica-2"), &[&good], &[]),
        tls(&evil.issue("replica-3"), &[&good], &[]),
    ];
    let nodes = start_cluster(ClusterId(82), &networks).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.listen_addr().to_string()).collect();
    let client = Client::connect(
        tls(&good.issue("client"), &[&good], &[]),
        ClusterId(82),
        addrs[..2].to_vec(),
        client_options(),
    )
    .await
    .unwrap();
    let mut last = Slot(0);
    for i in 0..20 {
        last = client.call(put(i)).await.unwrap().slot;
    }
    // Replicas 1 and 2 commit alone; replica 3 took part in nothing.
    let s3 = nodes[2].status();
    assert_eq!(s3.commit, Slot(0), "replica 3 learned commits: {s3:?}");
    assert_ne!(s3.role, Some(RoleKind::Leader));
    // It promised no other replica's ballot and accepted nothing.
    assert!(
        s3.promised.replica == ReplicaId(3) || s3.promised.round == 0,
        "replica 3 promised {:?}",
        s3.promised
    );
    assert_eq!(s3.applied, Slot(0));
    let leader = nodes[..2]
        .iter()
        .find(|n| n.status().role == Some(RoleKind::Leader))
        .expect("replica 1 or 2 leads");
    wait_until("the leader's status shows the commits", || {
        leader.status().commit >= last
    })
    .await;
    // A client that does not trust the replicas' certificates is refused
    // at once, every address named: nothing to retry.
    let started = std::time::Instant::now();
    let doubtful = Client::connect(
        tls(&good.issue("client"), &[&evil], &[]),
        ClusterId(82),
        addrs[..2].to_vec(),
        client_options(),
    )
    .await;
    match doubtful {
        Err(ClientError::Unreachable(why)) => {
            assert!(why.starts_with("refused by every replica"), "{why}");
            assert!(why.contains(&addrs[0]) && why.contains(&addrs[1]), "{why}");
            assert!(why.contains("TLS"), "{why}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a client that trusts no replica connected"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "retried a refusal"
    );
    // A client with an untrusted certificate, and one without TLS, submit
    // nothing.
    for net in [tls(&evil.issue("client"), &[&good], &[]), Network::Tcp] {
        let intruder = Client::connect(
            net,
            ClusterId(82),
            addrs[..2].to_vec(),
            ClientOptions {
                deadline: Duration::from_secs(2),
                ..client_options()
            },
        )
        .await;
        if let Ok(c) = intruder {
            let e = c.call(put(999)).await.unwrap_err();
            assert!(
                matches!(e, ClientError::Timeout | ClientError::Unreachable(_)),
                "{e:?}"
            );
            c.close().await;
        }
    }
    let get = KvOp::Get {
        key: Bytes::from_static(b"k999"),
    }
    .encode();
    let r = client.call(get).await.unwrap();
    assert_eq!(
        engine::kv::KvResult::decode(&r.payload).unwrap(),
        engine::kv::KvResult::Value(None),
        "an intruder's write was applied"
    );
    client.close().await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// How long an attacker waits before opening its next connection.
const ATTACKER_RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// What one kind of attacker saw: connections opened, and how many of them
/// the replica closed.
#[derive(Default)]
struct Attack {
    opened: std::sync::atomic::AtomicU64,
    closed_by_replica: std::sync::atomic::AtomicU64,
}

impl Attack {
    fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn closed(&self) -> u64 {
        self.closed_by_replica
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn note_open(&self) {
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn note_closed(&self) {
        self.closed_by_replica
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Holds a connection until the replica closes it (reads until EOF or an
/// error), after `send` was written.
async fn hold(addr: String, send: Vec<u8>, trickle: Option<Duration>, who: Arc<Attack>) {
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    };
    who.note_open();
    if s.write_all(&send).await.is_err() {
        who.note_closed();
        return;
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let read = match trickle {
            // A byte now and then, never a whole frame.
            Some(every) => match tokio::time::timeout(every, s.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    if s.write_all(&[0u8]).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => s.read(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    who.note_closed();
}

/// Counts `client`'s calls committed by `n` workers with 8 in flight each,
/// until `stop`.
async fn well_behaved(client: Arc<Client>, stop: tokio::time::Instant) -> u64 {
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while tokio::time::Instant::now() < stop {
                client
                    .call(put(w * 1_000_000 + done as u32))
                    .await
                    .expect("a well-behaved client's call fails");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_slowloris_and_greedy_clients_leaves_the_cluster_committing() {
    use engine::core::ClientId;
    use engine::transport::wire::{self, ClientRequest, Hello, Role};
    const CLUSTER: ClusterId = ClusterId(83);
    let nodes = start_cluster_with(CLUSTER, &[Network::Tcp, Network::Tcp, Network::Tcp], |c| {
        c.client_connections_max = 48;
        c.handshake_connections_max = 16;
        c.client_idle = Duration::from_secs(1);
        c.client_outstanding_max = 64;
    })
    .await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.listen_addr().to_string()).collect();
    let client = Arc::new(
        Client::connect(Network::Tcp, CLUSTER, addrs.clone(), client_options())
            .await
            .unwrap(),
    );
    client.call(put(0)).await.unwrap();
    let window = Duration::from_secs(2);
    let calm = well_behaved(client.clone(), tokio::time::Instant::now() + window).await;

    let hello = wire::encode_hello(CLUSTER, &Hello { role: Role::Client })
        .to_bytes()
        .to_vec();
    let (pre, post, hogs, greedy) = (
        Arc::new(Attack::default()),
        Arc::new(Attack::default()),
        Arc::new(Attack::default()),
        Arc::new(Attack::default()),
    );
    let flood_end = tokio::time::Instant::now() + window + Duration::from_secs(2);
    let mut attackers = Vec::new();
    let mut spawn_loop =
        |n: usize, make: Arc<dyn Fn(String) -> tokio::task::JoinHandle<()> + Send + Sync>| {
            for i in 0..n {
                let addr = addrs[i % addrs.len()].clone();
                let make = make.clone();
                attackers.push(tokio::spawn(async move {
                    while tokio::time::Instant::now() < flood_end {
                        let _ = make(addr.clone()).await;
                        // The attackers share this machine's two cores with the
                        // replicas: a pause before reconnecting keeps the
                        // measurement about the replicas' defence, not about
                        // the attackers' own CPU.
                        tokio::time::sleep(ATTACKER_RECONNECT_PAUSE).await;
                    }
                }));
            }
        };
    // Slowloris before the hello: three bytes of a header, then nothing.
    let p = pre.clone();
    spawn_loop(
        120,
        Arc::new(move |a| tokio::spawn(hold(a, vec![0x50, 0x58, 0x00], None, p.clone()))),
    );
    // Slowloris after the hello: a header announcing a large frame, then a
    // byte every 200 ms.
    let (p, h) = (post.clone(), hello.clone());
    spawn_loop(
        30,
        Arc::new(move |a| {
            let mut send = h.clone();
            let big = wire::encode_client_request(
                CLUSTER,
                &ClientRequest {
                    client: ClientId(7),
                    seq: 1,
                    ack_below: 0,
                    op: Bytes::from(vec![0u8; 1 << 20]),
                },
            )
            .to_bytes();
            send.extend_from_slice(&big[..64]);
            tokio::spawn(hold(a, send, Some(Duration::from_millis(200)), p.clone()))
        }),
    );
    // Connection hogs: a hello, then silence.
    let (p, h) = (hogs.clone(), hello.clone());
    spawn_loop(
        150,
        Arc::new(move |a| tokio::spawn(hold(a, h.clone(), None, p.clone()))),
    );
    // Greedy clients: a hello, then requests as fast as the socket takes
    // them, never reading an answer.
    let (p, h) = (greedy.clone(), hello.clone());
    spawn_loop(
        4,
        Arc::new(move |a| {
            let (p, h) = (p.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(&a).await else {
                    return;
                };
                p.note_open();
                let _ = s.write_all(&h).await;
                let id = ClientId(rand_id());
                for seq in 1.. {
                    let f = wire::encode_client_request(
                        CLUSTER,
                        &ClientRequest {
                            client: id,
                            seq,
                            ack_below: 0,
                            op: put(seq as u32),
                        },
                    );
                    if tokio::time::Instant::now() >= flood_end
                        || s.write_all(&f.to_bytes()).await.is_err()
                    {
                        break;
                    }
                }
                p.note_closed();
            })
        }),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = well_behaved(client.clone(), tokio::time::Instant::now() + window).await;
    for a in attackers {
        let _ = a.await;
    }
    let secs = window.as_secs_f64();
    println!(
        "well-behaved commits: {:.0}/s calm, {:.0}/s during the flood ({} pre-hello slowloris connections, \
         {} closed; {} post-hello slowloris, {} closed; {} hogs, {} closed; {} greedy)",
        calm as f64 / secs,
        flooded as f64 / secs,
        pre.opened(),
        pre.closed(),
        post.opened(),
        post.closed(),
        hogs.opened(),
        hogs.closed(),
        greedy.opened(),
    );
    assert!(
        flooded > 0,
        "no well-behaved command committed during the flood"
    );
    // Each limit acted: pre-hello connections were evicted or timed out,
    // idle and trickling clients were closed, hogs beyond the bound refused.
    assert!(pre.closed() > 0 && post.closed() > 0 && hogs.closed() > 0);
    assert!(greedy.opened() > 0);
    // The cluster is whole afterwards.
    let last = client.call(put(1)).await.unwrap().slot;
    for n in &nodes {
        wait_until("every replica applies the writes", || {
            n.status().applied >= last
        })
        .await;
    }
    Arc::try_unwrap(client)
        .ok()
        .expect("one owner")
        .close()
        .await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_is_closed_and_an_active_one_is_not() {
    use engine::transport::wire::{self, Hello, Role};
    const CLUSTER: ClusterId = ClusterId(84);
    let idle = Duration::from_millis(300);
    let nodes = start_cluster_with(CLUSTER, &[Network::Tcp, Network::Tcp, Network::Tcp], |c| {
        c.client_idle = idle;
    })
    .await;
    let addr = nodes[0].listen_addr().to_string();
    let hello = wire::encode_hello(CLUSTER, &Hello { role: Role::Client }).to_bytes();
    let status = wire::encode_status_request(CLUSTER).to_bytes();
    // Reads until the replica closes the connection: when that was.
    async fn closed_at(mut r: tokio::net::tcp::OwnedReadHalf) -> std::time::Instant {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        std::time::Instant::now()
    }
    // Silent after its hello: closed after one to two idle periods.
    let start = std::time::Instant::now();
    let (r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    w.write_all(&hello).await.unwrap();
    let silent = tokio::time::timeout(Duration::from_secs(5), closed_at(r))
        .await
        .expect("an idle connection was never closed")
        - start;
    assert!(
        silent >= idle && silent < 4 * idle,
        "closed after {silent:?}"
    );
    // A request every half idle period for four periods: kept open; closed
    // once it falls silent.
    let (r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    w.write_all(&hello).await.unwrap();
    let reader = tokio::spawn(closed_at(r));
    for _ in 0..8 {
        w.write_all(&status).await.unwrap();
        tokio::time::sleep(idle / 2).await;
    }
    let quiet_from = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the connection was never closed once silent")
        .unwrap();
    assert!(
        closed >= quiet_from,
        "an active connection was closed as idle"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A port free now and below the kernel's ephemeral range (32768 and up
/// on Linux): a port taken with `bind(":0")` and released is one an
/// outgoing connection of a test running beside this one can take before
/// the replica binds it (seen: `AddrInUse` in `make test`).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (std::process::id().wrapping_mul(389).wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
