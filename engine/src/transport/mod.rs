//! `engine::transport`: how replicas and clients talk.
//!
//! - [`wire`]: frames (length, cluster id, protocol version, kind,
//!   checksum) and the codec of every message, zero-copy for payloads;
//! - [`net`]: TCP or an in-process network, frame reading and vectored
//!   frame writing;
//! - [`tls`]: mutual TLS (rustls), certificates from CAs or pinned
//!   fingerprints, several trusted at once for rotation.

pub mod net;
pub mod tls;
pub mod wire;
