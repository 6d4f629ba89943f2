//! Operator requests from a client: a replica's status and a
//! configuration change.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::ClusterId;
use crate::transport::net::{FrameStream, Network};
use crate::transport::wire::{self, FrameReader, Hello, Role, kind};

use super::ClientError;

/// Asks the replica at `addr` for its status (`replica --status`): a client
/// handshake, one `STATUS_REQUEST`, the JSON of its `StatusReport`.
pub async fn fetch_status(
    network: &Network,
    cluster: ClusterId,
    addr: &str,
    timeout: Duration,
) -> Result<crate::runtime::StatusReport, ClientError> {
    let body = admin_request(
        network,
        cluster,
        addr,
        wire::encode_status_request(cluster),
        kind::STATUS_REPLY,
        timeout,
    )
    .await?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Invalid(format!("{addr}: bad status: {e}")))
}

/// Asks the cluster to change its voting members to `members`
/// (`replica --change`): finds the leader among `addresses` (following
/// its hints), retries while it is busy with another change, and returns
/// the leader's answer once the change is in force, given up, invalid, or
/// of unknown outcome (a leader change in between). A change waits for
/// its new members to catch up, so `timeout` should allow for that.
pub async fn change_config(
    network: &Network,
    cluster: ClusterId,
    addresses: &[(u32, String)],
    members: &[u32],
    timeout: Duration,
) -> Result<crate::runtime::admin::ConfigChangeReply, ClientError> {
    use crate::runtime::admin::{ConfigChangeReply, ConfigChangeRequest, ConfigOutcome};
    if addresses.is_empty() {
        return Err(ClientError::Invalid("no replica addresses".into()));
    }
    let request = serde_json::to_vec(&ConfigChangeRequest {
        members: members.to_vec(),
    })
    .expect("a request serializes");
    let request = Bytes::from(request);
    let deadline = Instant::now() + timeout;
    let mut target = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        let addr = &addresses[target].1;
        let frame = wire::encode_config_change(cluster, request.clone());
        let answer = admin_request(
            network,
            cluster,
            addr,
            frame,
            kind::CONFIG_CHANGE_REPLY,
            left,
        )
        .await;
        let pause = match answer {
            Ok(body) => {
                let reply: ConfigChangeReply = serde_json::from_slice(&body).map_err(|e| {
                    ClientError::Invalid(format!("{addr}: bad configuration change reply: {e}"))
                })?;
                match reply.outcome {
                    ConfigOutcome::NotLeader => {
                        let hinted = reply
                            .leader
                            .and_then(|l| addresses.iter().position(|(id, _)| *id == l));
                        target = match hinted {
                            Some(i) if i != target => i,
                            _ => (target + 1) % addresses.len(),
                        };
                        Duration::from_millis(50)
                    }
                    // Another change first: ask the same leader again.
                    ConfigOutcome::Busy => Duration::from_millis(100),
                    _ => return Ok(reply),
                }
            }
            Err(ClientError::Timeout) => return Err(ClientError::Timeout),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "configuration change: trying another replica");
                target = (target + 1) % addresses.len();
                Duration::from_millis(50)
            }
        };
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// One operator request on a client connection of its own: the handshake,
/// `request`, and the body of the first frame of kind `reply`.
async fn admin_request(
    network: &Network,
    cluster: ClusterId,
    addr: &str,
    request: wire::Frame,
    reply: u16,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    use tokio::io::AsyncWriteExt;
    let closed = |why: String| ClientError::Closed(format!("{addr}: {why}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, network.connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| closed(e.to_string()))?;
    let (r, mut w) = tokio::io::split(stream);
    let hello = wire::encode_hello(cluster, &Hello { role: Role::Client });
    w.write_all(&hello.to_bytes())
        .await
        .map_err(|e| closed(e.to_string()))?;
    w.write_all(&request.to_bytes())
        .await
        .map_err(|e| closed(e.to_string()))?;
    let mut frames = FrameStream::new(
        r,
        FrameReader {
            cluster,
            frame_bytes_max: 16 << 20,
        },
    );
    loop {
        let (k, body) = tokio::time::timeout_at(deadline, frames.next())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| closed(e.to_string()))?;
        match k {
            kind::HELLO_ACK => continue,
            kind::REFUSED => {
                return Err(ClientError::Invalid(format!(
                    "refused by {addr}: {}",
                    wire::decode_refused(body).unwrap_or_default()
                )));
            }
            k if k == reply => return Ok(body),
            other => return Err(closed(format!("unexpected frame kind {other}"))),
        }
    }
}
