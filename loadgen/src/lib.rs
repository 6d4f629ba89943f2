//! The lab's library: what the system tests and the soak share with the
//! experiment runner (`loadgen`'s binary).

pub mod faultnet;
