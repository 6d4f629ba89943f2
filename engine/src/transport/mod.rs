//! `engine::transport`: how replicas and clients talk.
//!
//! - [`wire`]: frames (length, cluster id, protocol version, kind,
//!   checksum) and the codec of every message, zero-copy for payloads;
//! - [`net`]: TCP or an in-process network, frame reading and vectored
//!   frame writing.

pub mod net;
pub mod wire;
